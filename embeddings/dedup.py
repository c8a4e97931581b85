"""Post-training row deduplication: a full table is trained, then identical / near-identical rows are merged
and the table is served as an index map into the unique rows.

Deduplication in the VLDB 2024 benchmark follows Zhou et al., "Serving Deep Learning Models with
Deduplication from Relational Databases" (VLDB 2022), which finds identical or similar blocks of trained
tensors and stores each only once plus a block index. Here the block is a whole embedding row:

1. rows within ``eps`` of each other (same cell of an ``eps`` grid; ``eps = 0``: bit-identical) are merged
   into their mean -- the lossless / near-lossless part;
2. if more unique rows remain than the budget holds, they are clustered into ``U`` centroids by k-means
   (k-means++ seeding, Lloyd iterations, each unique row weighted by how many rows it stands for) and
   every feature points at its centroid. This lossy step is what meets small budgets: with
   ``U << N`` the method is really vector quantization of the trained rows, not deduplication, and the
   benchmark should be read that way.

Storage: :class:`embeddings.dpq.CodebookTable` with one group -- the index map is bit-packed
(1, 2, 4, 8 or 16 bits per feature, whatever ``U`` needs) and the ``U`` unique rows are float32. ``U`` is
the largest count whose map + rows fit the budget (so ``U <= 65536``), fixed at construction;
:class:`~embeddings.table.BudgetError` when not even two rows and a 1-bit map fit (N / 8 bytes +
2 rows). Training memory is the full table (``init_std`` as in the full table); only the finalized
table is compressed, and k-means costs ``O(N U dim)`` per iteration, in chunks. The trainer validates
each epoch on the finalized table (``lossy_finalize``): early stopping and the kept checkpoint are
chosen by what will serve, not by the full training table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from embeddings.dpq import CODE_BITS, CodebookTable, packed_bytes
from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError

DISTANCE_CHUNK = 8192  # rows per distance block in k-means


def plan_unique_rows(num_features: int, dim: int, available: int) -> int:
    """The most unique rows ``U`` whose packed index map + float32 rows fit ``available`` bytes."""
    best = 0
    for bits in CODE_BITS:
        room = (available - packed_bytes(num_features, bits)) // (dim * FLOAT_BYTES)
        best = max(best, min(room, 1 << bits, num_features))
    return int(best)


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center of every point (squared L2, in chunks of rows)."""
    center_norms = (centers * centers).sum(axis=1)
    return np.concatenate([
        (center_norms - 2.0 * chunk @ centers.T).argmin(axis=1)
        for chunk in np.array_split(points, max(1, -(-len(points) // DISTANCE_CHUNK)))
    ])


def weighted_kmeans(points: torch.Tensor, weights: torch.Tensor, k: int, iterations: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centers [k, dim], assignment [n])``: k-means++ seeding, then up to ``iterations`` Lloyd steps
    (stopping early once no assignment changes); points weighted. Runs in numpy on the host
    (sequential seeding is many tiny steps) and returns tensors on ``points``' device."""
    x = points.detach().cpu().double().numpy()
    w = weights.detach().cpu().double().numpy()
    rng = np.random.default_rng(seed)
    picks = [int(rng.choice(len(x), p=w / w.sum()))]
    dist = ((x - x[picks[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        mass = np.cumsum(dist * w)
        pick = int(np.searchsorted(mass, rng.random() * mass[-1], side="right")) if mass[-1] > 0 else 0
        pick = min(pick, len(x) - 1)
        picks.append(pick)
        dist = np.minimum(dist, ((x - x[pick]) ** 2).sum(axis=1))
    centers, previous = x[picks], None
    for _ in range(iterations):
        assign = _nearest(x, centers)
        if previous is not None and np.array_equal(assign, previous):
            break
        previous = assign
        mass = np.bincount(assign, weights=w, minlength=k)
        totals = np.stack([np.bincount(assign, weights=w * col, minlength=k) for col in x.T], axis=1)
        filled = mass > 0
        centers[filled] = totals[filled] / mass[filled, None]
    assign = _nearest(x, centers)
    return (torch.from_numpy(centers).to(points.device, points.dtype),
            torch.from_numpy(assign).to(points.device))


def merge_close_rows(rows: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unique rows, multiplicity, index of each row's unique row)``: identical rows (``eps = 0``, kept
    bit-exact) or rows in the same cell of an ``eps`` grid (merged into their mean)."""
    keys = rows if eps == 0 else torch.round(rows / eps)
    unique, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    weights = counts.to(rows.dtype)
    if eps == 0:
        return unique, weights, inverse
    sums = torch.zeros(unique.shape[0], rows.shape[1], dtype=rows.dtype, device=rows.device)
    return sums.index_add_(0, inverse, rows) / weights.unsqueeze(1), weights, inverse


class DedupTable(EmbeddingTable):
    """A full ``weight[N, dim]`` while training; :meth:`finalize` -> index map + ``<= unique_rows`` rows."""

    kind = "dedup"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        eps: float = 0.0,
        iterations: int = 20,
        seed: int = 0,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if eps < 0 or iterations < 0:
            raise InputError("eps", f"eps and iterations must be >= 0, got {eps}, {iterations}")
        self.eps, self.iterations, self.seed, self.init_std = float(eps), int(iterations), int(seed), init_std
        self.unique_rows = plan_unique_rows(num_features, dim, self.room_bytes())
        if self.unique_rows < 2:
            raise BudgetError(self.kind, f"an index map of {num_features} features and two rows do not fit "
                                         f"in {self.budget_bytes()} bytes")
        self.weight = nn.Parameter(torch.empty(num_features, dim))
        nn.init.normal_(self.weight, std=self.init_std)

    def options(self) -> dict[str, Any]:
        return {"eps": self.eps, "iterations": self.iterations, "seed": self.seed, "init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup_rows(self.weight, ids)

    @property
    def lossy_finalize(self) -> bool:
        """True: the served rows are merged / clustered trained rows, so validation runs on them."""
        return True

    @torch.no_grad()
    def finalize(self) -> EmbeddingTable:
        rows = self.weight.detach()
        unique, counts, inverse = merge_close_rows(rows, self.eps)
        if unique.shape[0] <= self.unique_rows:
            codebook, codes = unique, inverse
        else:
            centers, assign = weighted_kmeans(unique, counts, self.unique_rows, self.iterations, self.seed)
            codebook, codes = centers, assign[inverse]
        return CodebookTable.from_codes(self, codes.unsqueeze(1), codebook.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, unique_rows={self.unique_rows}, eps={self.eps:g}"
