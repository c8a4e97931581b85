"""The hashing trick: every feature reads one row of a small shared table (Weinberger et al., ICML 2009).

"Feature Hashing for Large Scale Multitask Learning" maps a huge feature space into ``m`` buckets with a
hash function; applied to embeddings (the first inter-feature method of the VLDB 2024 benchmark), feature
``x`` reads row ``h(x) mod m`` of an ``[m, dim]`` table and colliding features share that row.

Design choices:

- ``h`` is a seeded Carter-Wegman universal hash ``((a * (x mod p) + b) mod p) mod m``, ``p = 2^31 - 1``
  (:func:`kernels.embedding_bag_reference.universal_hash`): the mapping is two integers derived from
  ``seed``, recomputed from the config, so nothing but the ``[m, dim]`` rows is stored.
- No sign hash: Weinberger's ``xi(x) = +-1`` makes hashed inner products unbiased for *fixed* feature
  values; a learned row absorbs any sign, so it only costs a second hash here.
- ``m`` is the largest row count within the budget (the base class's int64 field offsets, when
  ``field_dims`` is given, count against it); :class:`~embeddings.table.BudgetError` when not even one row
  fits. Rows start from N(0, ``init_std``) like the full table.
- On CUDA, inference runs the fused Triton kernel of :mod:`kernels.embedding_bag` (hash + gather in one
  launch); training and CPU run the torch reference, whose backward is the faster one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from kernels.embedding_bag import embedding_bag
from kernels.embedding_bag_reference import HASH_PRIME, HashLookup


def hash_coefficients(seed: int, count: int) -> list[tuple[int, int]]:
    """``count`` seeded universal-hash coefficient pairs ``(a, b)``, ``1 <= a < p``, ``0 <= b < p``."""
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randint(1, HASH_PRIME, (count,), generator=gen, dtype=torch.int64)
    b = torch.randint(0, HASH_PRIME, (count,), generator=gen, dtype=torch.int64)
    return list(zip(a.tolist(), b.tolist(), strict=True))


def flat_lookup(table: EmbeddingTable, ids: torch.Tensor, lookup: Any) -> torch.Tensor:
    """:func:`~kernels.embedding_bag.embedding_bag` of ids of any shape through ``table.weight``."""
    out = embedding_bag(table.weight, ids.reshape(-1, 1), lookup)
    return out.reshape(*ids.shape, table.dim)


class HashingTable(EmbeddingTable):
    """``weight[m, dim]``; feature ``x`` reads row ``h(x) mod m``."""

    kind = "hashing"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        seed: int = 0,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        self.seed, self.init_std = int(seed), float(init_std)
        rows = self.room_bytes() // (dim * FLOAT_BYTES)
        if rows < 1:
            raise BudgetError(self.kind, f"{self.budget_bytes()} bytes cannot hold one row of {dim} floats")
        self.num_rows = int(min(rows, num_features))
        (a, b), = hash_coefficients(self.seed, 1)
        self.hash = HashLookup(a, b)
        self.weight = nn.Parameter(torch.empty(self.num_rows, dim))
        nn.init.normal_(self.weight, std=self.init_std)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return flat_lookup(self, ids, self.hash)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows={self.num_rows}"
