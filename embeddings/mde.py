"""Mixed-dimension embeddings (MDE; Ginart et al., "Mixed Dimension Embeddings with Application to
Memory-Efficient Recommendation Systems", ISIT 2021).

The id space is cut into blocks (the fields, or any contiguous id ranges, e.g. frequency blocks when
ids are numbered by frequency). Block ``b`` stores its ``n_b`` rows at ``d_b <= dim`` dimensions and a
``[d_b, dim]`` projection back to ``dim``; a block at ``d_b == dim`` is a plain table (no projection).

Design choices:

- Dimensions follow the paper's power-law rule ``d_b = lambda * p_b ** alpha`` with temperature
  ``alpha`` and block popularity ``p_b``. Only cardinalities are known here, so ``p_b`` is taken as the
  per-row access probability of a uniformly used block, ``p_b ~ 1 / n_b`` (what the authors' DLRM code
  uses without frequency data): small fields get wide rows, huge fields narrow ones. ``alpha = 0``
  gives one uniform dimension.
- ``lambda`` is the largest value whose table fits the budget (bisection; the stored bytes are monotone
  in ``lambda``): ``d_b = clip(round(lambda * n_b ** -alpha), 1, dim)``, and a block is stored full
  whenever ``d_b * (n_b + dim) >= n_b * dim`` (the projection would cost more than it saves).
- Budget: every row and projection float plus the field offsets; :class:`BudgetError` when even one
  dimension per block does not fit (on Frappe below about 6.5% of the full table).
- Explicit ``dims`` (one per block) skip the rule; AutoDim's serving table is such a table.
- Rows start from N(0, ``init_std``) like the full table, projections from N(0, 1 / d_b), so a looked-up
  vector starts at the same scale as a full-table row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from sparsekit.errors import InputError


def block_bytes(rows: int, width: int, dim: int) -> int:
    """Bytes of one block: ``rows x width`` floats plus a ``[width, dim]`` projection when narrower."""
    projection = width * dim if width < dim else 0
    return (rows * width + projection) * FLOAT_BYTES


def power_law_dims(sizes: Sequence[int], dim: int, alpha: float, available: int) -> list[int] | None:
    """The widest power-law dims (``d_b ~ n_b ** -alpha``) whose blocks fit in ``available`` bytes, or
    ``None`` when one dimension per block does not fit."""

    def dims_at(scale: float) -> list[int]:
        out = []
        for n in sizes:
            width = min(dim, max(1, round(scale * n ** -alpha)))
            out.append(dim if width * (n + dim) >= n * dim else width)
        return out

    def cost(dims: list[int]) -> int:
        return sum(block_bytes(n, d, dim) for n, d in zip(sizes, dims, strict=True))

    if cost(dims_at(0.0)) > available:
        return None
    low, high = 0.0, 2.0 * dim * max(sizes) ** alpha  # at ``high`` every block is full width
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(dims_at(mid)) <= available else (low, mid)
    return dims_at(low)


class MixedDimTable(EmbeddingTable):
    """Per-block ``[n_b, d_b]`` rows projected to ``dim`` by a ``[d_b, dim]`` matrix."""

    kind = "mde"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        alpha: float = 0.3,
        blocks: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if alpha < 0:
            raise InputError("alpha", f"must be >= 0, got {alpha}")
        self.alpha, self.init_std = float(alpha), float(init_std)
        self.blocks = self._blocks(blocks)
        self.dims = self._dims(dims)
        starts = torch.tensor((0, *self.blocks[:-1]), dtype=torch.int64).cumsum(0)
        self.block_starts = starts.tolist()
        shapes = zip(self.blocks, self.dims, strict=True)
        self.rows = nn.ParameterList(nn.Parameter(torch.randn(n, d) * self.init_std) for n, d in shapes)
        self.projections = nn.ParameterList(
            nn.Parameter(torch.randn(d, dim) / d**0.5) for d in self.dims if d < dim
        )
        self._projection_of = _projection_slots(self.dims, dim)
        self.check_budget()

    def _blocks(self, blocks: Sequence[int] | None) -> tuple[int, ...]:
        sizes = tuple(int(b) for b in (blocks or self.field_dims or (self.num_features,)))
        if min(sizes) < 1 or sum(sizes) != self.num_features:
            raise InputError("blocks", f"block sizes {sizes} must be >= 1 and sum to {self.num_features}")
        return sizes

    def _dims(self, dims: Sequence[int] | None) -> tuple[int, ...]:
        if dims is not None:
            widths = tuple(int(d) for d in dims)
            if len(widths) != len(self.blocks) or not all(1 <= d <= self.dim for d in widths):
                raise InputError("dims", f"need {len(self.blocks)} dims in [1, {self.dim}], got {widths}")
            return widths
        available = self.room_bytes()  # the field offsets are already stored
        widths = power_law_dims(self.blocks, self.dim, self.alpha, available)
        if widths is None:
            raise BudgetError(self.kind, f"{self.budget_bytes()} bytes cannot hold one dimension per block")
        return tuple(widths)

    def options(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "blocks": list(self.blocks),
            "dims": list(self.dims),
            "init_std": self.init_std,
        }

    def block_vectors(self, block: int, local: torch.Tensor) -> torch.Tensor:
        """``dim``-wide vectors of block-local ids."""
        rows = self.rows[block][local]
        slot = self._projection_of[block]
        return rows if slot < 0 else rows @ self.projections[slot]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if len(self.blocks) == 1:
            return self.block_vectors(0, flat).reshape(*ids.shape, self.dim)
        starts = torch.tensor(self.block_starts, device=flat.device)
        block = torch.bucketize(flat, starts, right=True) - 1
        out = self.rows[0].new_zeros(flat.numel(), self.dim)
        for b, start in enumerate(self.block_starts):
            hit = (block == b).nonzero(as_tuple=True)[0]
            if hit.numel():
                out = out.index_put((hit,), self.block_vectors(b, flat[hit] - start))
        return out.reshape(*ids.shape, self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dims={list(self.dims)}"


def _projection_slots(dims: Sequence[int], dim: int) -> list[int]:
    """Index into the projection list of each block (-1: a full-width block has none)."""
    slots, count = [], 0
    for d in dims:
        slots.append(count if d < dim else -1)
        count += d < dim
    return slots
