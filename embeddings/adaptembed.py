"""AdaptEmbed: rows for the important features, shared hashed rows for the rest (after Lai et al.,
"AdaEmbed: Adaptive Embedding for Large-Scale Recommendation Models", OSDI 2023).

Our reading of the method: AdaEmbed keeps a fixed pool of embedding rows (the memory budget) and,
during training, keeps deciding which feature ids deserve one. Each id has an importance score built
from how often it is looked up and how large its gradients are, decayed over time; periodically the
ids with the highest scores are (re)allocated pool rows and the others lose theirs. The VLDB 2024
benchmark's version (DeepRec's adaptive embedding) gives frequent ids their own rows and hashes rare
ids into a small shared table; we combine the two: rare / unimportant ids read a hashed shared row.

Design choices:

- Importance of id ``x``: the sum, over its lookups, of the gradient norm of its vector (so access
  frequency times gradient magnitude), collected by a backward hook in :meth:`AdaptEmbedTable.forward`,
  multiplied by ``decay`` at every reallocation (every ``realloc_every`` steps). Ids never seen keep
  no row. A newly allocated id's row starts as a copy of the shared row it was reading, so its vector
  does not jump; evicted ids fall back to their shared row. (Adam's moments of a reassigned row are
  not reset: the optimizer is the trainer's.)
- Shared rows: ``shared_fraction`` of the budget (at least one row), ``h(x) = (x * 2654435761) mod H``.
- Serving (:meth:`finalize` -> :class:`AllocatedRowsTable`): the allocated ids as a sorted key array
  (int16 / int32 / int64, binary-searched), their rows, and the shared rows. The training-only state
  (importance scores, the id -> row map) is dropped. Budget: keys + rows + shared rows + field
  offsets; :class:`BudgetError` when not one allocated and one shared row fit (never on Frappe at
  budget >= 0.001: 3 rows and 1 shared row there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.csr_rows import index_dtype
from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from sparsekit.errors import InputError

HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant


def shared_slot(ids: torch.Tensor, shared_rows: int) -> torch.Tensor:
    """The shared row an unallocated id reads."""
    return (ids * HASH_MULTIPLIER) % shared_rows


def plan_rows(num_features: int, dim: int, available: int, shared_fraction: float) -> tuple[int, int]:
    """``(allocated, shared)`` row counts filling ``available`` bytes (keys included)."""
    row = dim * FLOAT_BYTES
    key = torch.empty(0, dtype=index_dtype(num_features - 1)).element_size()
    shared = max(1, int(shared_fraction * available) // row)
    allocated = min(num_features, (available - shared * row) // (row + key))
    return int(allocated), int(shared)


class AllocatedRowsTable(EmbeddingTable):
    """Serving form of AdaptEmbed: sorted allocated ids with their rows, and hashed shared rows."""

    kind = "adaptembed-rows"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        allocated: int = 0,
        shared_rows: int = 1,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if not 0 <= allocated <= num_features or shared_rows < 1:
            raise InputError("allocated", f"need 0 <= allocated <= {num_features} and shared_rows >= 1")
        self.allocated, self.shared_rows = int(allocated), int(shared_rows)
        self.register_buffer("keys", torch.arange(allocated, dtype=index_dtype(num_features - 1)))
        self.rows = nn.Parameter(torch.zeros(allocated, dim))
        self.shared = nn.Parameter(torch.zeros(shared_rows, dim))
        self.check_budget()

    def options(self) -> dict[str, Any]:
        return {"allocated": self.allocated, "shared_rows": self.shared_rows}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        hashed = self.shared[shared_slot(ids, self.shared_rows)]
        if self.allocated == 0:
            return hashed
        wanted = ids.to(self.keys.dtype)
        pos = torch.searchsorted(self.keys, wanted.reshape(-1)).reshape(ids.shape)
        pos = pos.clamp_(max=self.allocated - 1)
        hit = (self.keys[pos] == wanted)[..., None]
        return torch.where(hit, self.rows[pos], hashed)


class AdaptEmbedTable(EmbeddingTable):
    """A budget-sized pool of rows reallocated to the most important ids while training."""

    kind = "adaptembed"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        shared_fraction: float = 0.2,
        realloc_every: int = 20,
        decay: float = 0.9,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if not 0.0 <= shared_fraction < 1.0:
            raise InputError("shared_fraction", f"must be in [0, 1), got {shared_fraction}")
        if realloc_every < 1 or not 0.0 <= decay <= 1.0:
            raise InputError("realloc_every", "need realloc_every >= 1 and decay in [0, 1]")
        self.shared_fraction, self.realloc_every = float(shared_fraction), int(realloc_every)
        self.decay, self.init_std = float(decay), float(init_std)
        available = self.room_bytes()  # minus the field offsets
        self.pool_rows, self.shared_rows = plan_rows(num_features, dim, available, self.shared_fraction)
        if self.pool_rows < 1:
            raise BudgetError(
                self.kind, f"{self.budget_bytes()} bytes cannot hold one own and one shared row"
            )
        self.rows = nn.Parameter(torch.randn(self.pool_rows, dim) * self.init_std)
        self.shared = nn.Parameter(torch.randn(self.shared_rows, dim) * self.init_std)
        self.register_buffer("slot", torch.full((num_features,), -1, dtype=torch.int32))
        self.register_buffer("importance", torch.zeros(num_features))

    def options(self) -> dict[str, Any]:
        return {
            "shared_fraction": self.shared_fraction,
            "realloc_every": self.realloc_every,
            "decay": self.decay,
            "init_std": self.init_std,
        }

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        slots = self.slot[ids].long()
        own = self.rows[slots.clamp(min=0)]
        return torch.where((slots >= 0)[..., None], own, self.shared[shared_slot(ids, self.shared_rows)])

    def observe(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.register_hook(lambda grad: self._score(ids, grad))

    @torch.no_grad()
    def _score(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.importance.index_add_(0, ids.reshape(-1), grad.reshape(-1, self.dim).norm(dim=1))

    def after_step(self, step: int, total_steps: int) -> None:
        if step % self.realloc_every == 0:
            self.reallocate()

    @torch.no_grad()
    def reallocate(self) -> None:
        """Give the pool's rows to the highest-importance ids (seen ones only), then decay the scores."""
        top = torch.topk(self.importance, self.pool_rows, sorted=False).indices
        wanted = torch.zeros_like(self.slot, dtype=torch.bool)
        wanted[top[self.importance[top] > 0]] = True
        held = self.slot >= 0
        evicted = (held & ~wanted).nonzero(as_tuple=True)[0]
        incoming = (wanted & ~held).nonzero(as_tuple=True)[0]
        free = torch.ones(self.pool_rows, dtype=torch.bool, device=self.slot.device)
        free[self.slot[held & wanted].long()] = False
        rows = free.nonzero(as_tuple=True)[0][: incoming.numel()]
        self.rows[rows] = self.shared[shared_slot(incoming, self.shared_rows)]
        self.slot[evicted] = -1
        self.slot[incoming] = rows.to(self.slot.dtype)
        self.importance.mul_(self.decay)

    def finalize(self) -> EmbeddingTable:
        if not bool((self.slot >= 0).any()):
            self.reallocate()
        keys = (self.slot >= 0).nonzero(as_tuple=True)[0]  # ascending ids
        table = AllocatedRowsTable(
            self.num_features, self.dim, self.budget, field_dims=self.field_dims,
            allocated=keys.numel(), shared_rows=self.shared_rows,
        ).to(self.rows.device)
        with torch.no_grad():
            table.keys.copy_(keys.to(table.keys.dtype))
            table.rows.copy_(self.rows[self.slot[keys].long()])
            table.shared.copy_(self.shared)
        return table

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool={self.pool_rows}, shared={self.shared_rows}"
