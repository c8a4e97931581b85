"""TT-Rec: the embedding table as a tensor train (Yin et al., "TT-Rec: Tensor Train Compression for Deep
Learning Recommendation Model Embeddings", MLSys 2021).

The ``N x dim`` table is viewed as a ``k``-way tensor with row modes ``n_1 ... n_k`` (``prod n_j >= N``)
and column modes ``d_1 ... d_k`` (``prod d_j = dim``) and stored as ``k`` cores
``G_j[r_{j-1}, n_j, d_j, r_j]`` (``r_0 = r_k = 1``). Row ``x`` with mixed-radix digits ``(i_1, ..., i_k)``
is the chain product ``G_1[:, i_1] G_2[:, i_2] ... G_k[:, i_k]``, reshaped to ``dim``; rows are
computed on the fly, never materialised.

Design choices:

- ``cores`` (default 3, as in the paper): row modes are the most balanced integers with product
  ``>= N``; column modes split ``dim``'s prime factors as evenly as possible (``dim = 16`` ->
  ``2 x 2 x 4``).
- TT-ranks: one rank ``R`` for every inner bond, the largest whose cores fit the budget (``rank``
  fixes it). :class:`~embeddings.table.BudgetError` when rank 1 is already over budget.
- Init: the paper's sampled-Gaussian scheme -- every core ~ N(0, s) with ``s`` chosen so that a
  reconstructed entry (a sum of ``R^(k-1)`` products of ``k`` core entries) has standard deviation
  ``init_std``.
- Not implemented: the paper's cache of the most frequent full rows (it trades memory for speed) and
  its fused CUDA kernel; the chain product is a batched ``einsum`` on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from sparsekit.errors import InputError


def row_modes(num_features: int, cores: int) -> tuple[int, ...]:
    """Balanced row modes: ``cores`` integers, product ``>= num_features``, as small a sum as greedy finds."""
    modes = [math.ceil(num_features ** (1.0 / cores))] * cores
    while math.prod(modes) < num_features:  # floating-point root rounding
        modes[0] += 1
    for j in range(cores):
        while modes[j] > 1 and math.prod(modes) // modes[j] * (modes[j] - 1) >= num_features:
            modes[j] -= 1
    return tuple(sorted(modes, reverse=True))


def column_modes(dim: int, cores: int) -> tuple[int, ...]:
    """``cores`` factors of ``dim`` (product exactly ``dim``): its prime factors dealt to the smallest."""
    primes, rest, p = [], dim, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    modes = [1] * cores
    for prime in sorted(primes, reverse=True):
        modes[modes.index(min(modes))] *= prime
    return tuple(sorted(modes))


def core_floats(rows: Sequence[int], cols: Sequence[int], rank: int) -> int:
    """Parameters of the cores ``[r_{j-1}, n_j, d_j, r_j]`` with every inner rank ``rank``."""
    ranks = [1, *([rank] * (len(rows) - 1)), 1]
    return sum(ranks[j] * n * d * ranks[j + 1] for j, (n, d) in enumerate(zip(rows, cols, strict=True)))


class TTRecTable(EmbeddingTable):
    """Tensor-train cores ``G_j[r_{j-1}, n_j, d_j, r_j]``; a row chains one slice of every core."""

    kind = "tt_rec"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        cores: int = 3,
        rank: int | None = None,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if cores < 2:
            raise InputError("cores", f"a tensor train needs at least 2 cores, got {cores}")
        self.cores, self.init_std = int(cores), float(init_std)
        self.rows, self.cols = row_modes(num_features, cores), column_modes(dim, cores)
        floats = self.room_bytes() // FLOAT_BYTES
        self.rank = self._fit_rank(floats) if rank is None else int(rank)
        if self.rank < 1 or core_floats(self.rows, self.cols, self.rank) > floats:
            raise BudgetError(self.kind, f"rank-{max(self.rank, 1)} cores need "
                                         f"{core_floats(self.rows, self.cols, max(self.rank, 1))} floats, "
                                         f"the budget holds {floats}")
        ranks = [1, *([self.rank] * (cores - 1)), 1]
        self.factors = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[j], n, d, ranks[j + 1]))
            for j, (n, d) in enumerate(zip(self.rows, self.cols, strict=True))
        )
        std = (self.init_std ** 2 / self.rank ** (cores - 1)) ** (1.0 / (2 * cores))
        for core in self.factors:
            nn.init.normal_(core, std=std)

    def _fit_rank(self, floats: int) -> int:
        rank = 0
        while core_floats(self.rows, self.cols, rank + 1) <= floats:
            rank += 1
        return rank

    def options(self) -> dict[str, Any]:
        return {"cores": self.cores, "rank": self.rank, "init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)  # a batch repeats most features
        return self._rows(unique)[inverse]

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows ``[n, dim]`` of 1-D ids by the chain product."""
        digits, rest = [], flat
        for n in reversed(self.rows):  # the last core's mode varies fastest
            digits.append(rest % n)
            rest = rest // n
        digits.reverse()
        out = self.factors[0][0, digits[0]]  # [B, d_1, r_1]
        for core, digit in zip(self.factors[1:], digits[1:], strict=True):
            piece = core.permute(1, 0, 2, 3)[digit]  # [B, r_{j-1}, d_j, r_j]
            out = torch.einsum("bxr,brys->bxys", out, piece).flatten(1, 2)  # [B, d_1 ... d_j, r_j]
        return out.reshape(flat.shape[0], self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows={self.rows}, cols={self.cols}, rank={self.rank}"
