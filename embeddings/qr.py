"""Quotient-remainder / compositional embeddings (Shi et al., "Compositional Embeddings Using
Complementary Partitions for Memory-Efficient Recommendation Systems", KDD 2020).

Feature ``x`` gets a *unique* vector built from shared rows: with remainder table size ``m``, the
remainder ``x mod m`` and the quotient ``x // m`` each select a row of their own table and the two rows
are combined element-wise. Complementary partitions generalise this to ``k`` tables: ``x`` is written
in mixed radix ``(r_0, ..., r_{k-1})`` (``r_0 * ... * r_{k-1} >= num_features``) and digit ``j`` selects
a row of table ``j``; no two features share all their rows.

Design choices:

- ``combine``: ``"mult"`` (element-wise product, the paper's best operation and our default) or ``"add"``.
  Concatenation is not offered: it halves each partition's width, which the budget sizing below
  would have to special-case, for an operation the paper found weaker.
- Sizing: the partitions are stacked in one ``[sum(r_j), dim]`` float32 matrix. Of the two-table
  layouts that fit the budget we take the smallest quotient table ``t`` and give every remaining row
  to the remainder table (``m = rows - t``, ``m * t >= N``): the budget is used and the representation
  stays closest to a full table (each remainder row is shared by at most ``t`` features). When even
  the most compact two-table layout (``m ~ t ~ sqrt(N)``) is over budget we use the fewest partitions
  ``k`` that fit, the same way: ``k - 1`` equal tail radices ``t`` (the smallest that fits) and the rest
  of the rows in the first radix (``m * t^(k-1) >= N``). ``partitions`` fixes ``k`` instead.
  :class:`~embeddings.table.BudgetError` when no ``k`` up to ``ceil(log2 N)`` fits (all radices 2).
- Init: the first (remainder) partition ~ N(0, ``init_std``) like the full table; for ``"mult"`` the
  other partitions start at 1 + N(0, ``init_std``), so training starts from a hashed table and the
  quotient rows learn per-feature scalings (with ``"add"`` they start at N(0, ``init_std``)).
- On CUDA, inference runs the fused Triton kernel of :mod:`kernels.embedding_bag` (digits, gathers and
  the combine in one launch); training and CPU run the torch reference, whose backward is the faster one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.hashing import flat_lookup
from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from kernels.embedding_bag_reference import COMBINES, CompositionalLookup
from sparsekit.errors import InputError


def _layout(num_features: int, parts: int, max_rows: int) -> tuple[int, ...] | None:
    """Radices of ``parts`` partitions with the largest first radix within ``max_rows`` rows, or None."""
    tail = 2
    while (parts - 1) * tail < max_rows:
        needed = math.ceil(num_features / tail ** (parts - 1))
        first = min(max_rows - (parts - 1) * tail, num_features)
        if first >= needed:
            return (first, *([tail] * (parts - 1)))
        if needed <= tail:  # past the balanced layout the rows needed only grow
            return None
        tail += 1
    return None


def plan_radices(num_features: int, max_rows: int, partitions: int | None = None) -> tuple[int, ...]:
    """The mixed-radix layout used for ``num_features`` within ``max_rows`` stacked rows (see module doc)."""
    if partitions is not None:
        layout = _layout(num_features, partitions, max_rows)
        if layout is None:
            raise BudgetError("qr", f"{partitions} partitions of {num_features} features need more "
                                    f"than the {max_rows} rows the budget holds")
        return layout
    most = max(2, math.ceil(math.log2(max(num_features, 2))))
    for parts in range(2, most + 1):
        layout = _layout(num_features, parts, max_rows)
        if layout is not None:
            return layout
    raise BudgetError("qr", f"no complementary partition of {num_features} features fits in {max_rows} rows")


class QRTable(EmbeddingTable):
    """Stacked partition rows ``weight[sum(radices), dim]``; ``x``'s mixed-radix digits pick one row each."""

    kind = "qr"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        combine: str = "mult",
        partitions: int | None = None,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if combine not in COMBINES:
            raise InputError("combine", f"must be one of {COMBINES}, got {combine!r}")
        if partitions is not None and partitions < 2:
            raise InputError("partitions", f"needs at least 2 partitions, got {partitions}")
        self.combine, self.partitions, self.init_std = combine, partitions, float(init_std)
        max_rows = self.room_bytes() // (dim * FLOAT_BYTES)
        self.radices = plan_radices(num_features, max_rows, partitions)
        self.spec = CompositionalLookup(self.radices, combine)
        self.weight = nn.Parameter(torch.empty(self.spec.rows, dim))
        self._init_weights()

    def _init_weights(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, std=self.init_std)
            if self.combine == "mult":
                self.weight[self.radices[0]:] += 1.0

    def options(self) -> dict[str, Any]:
        return {"combine": self.combine, "partitions": self.partitions, "init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return flat_lookup(self, ids, self.spec)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, radices={self.radices}, combine={self.combine}"
