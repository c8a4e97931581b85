"""The search-then-prune table lifecycle shared by PEP (ICLR 2021) and AutoSrh (TKDE 2022).

Both methods train a dense ``[num_features, dim]`` table read through a learned reparameterisation
(PEP: soft thresholds; AutoSrh: per-group dimension saliencies). After ``search_fraction`` of the
trainer's steps the reparameterised weights are frozen into the table, the budget's count of the
largest is kept (:func:`~embeddings.csr_rows.magnitude_mask`), and training continues on the kept
weights only; ``finalize`` serves them as a :class:`~embeddings.csr_rows.SparseRowsTable`. A subclass
says only how its weights read during the search (:meth:`searched` for all rows, :meth:`search_lookup`
for a batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.csr_rows import SparseRowsTable, magnitude_mask, sparse_budget
from embeddings.table import EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError


class SearchThenPruneTable(EmbeddingTable):
    """A dense table searched through a reparameterisation, then pruned to the budget and served sparse."""

    def __init__(self, num_features: int, dim: int, budget: float, *, field_dims: Sequence[int] | None,
                 search_fraction: float, init_std: float) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if not 0.0 <= search_fraction <= 1.0:
            raise InputError("search_fraction", f"must be in [0, 1], got {search_fraction}")
        self.layout, self.max_nnz = sparse_budget(self)
        self.search_fraction, self.init_std = float(search_fraction), float(init_std)
        self.weight = nn.Parameter(torch.randn(num_features, dim) * self.init_std)
        self.register_buffer("mask", torch.ones(num_features, dim, dtype=torch.bool))
        self.register_buffer("pruned", torch.tensor(False))

    def searched(self) -> torch.Tensor:
        """Every row as the search reads it (what pruning keeps the largest of)."""
        raise NotImplementedError

    def search_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``ids`` as the search reads them."""
        raise NotImplementedError

    @property
    def settled(self) -> bool:
        return bool(self.pruned)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if bool(self.pruned):
            return lookup_rows(self.weight, ids) * self.mask[ids]
        return self.search_lookup(ids)

    @torch.no_grad()
    def prune(self) -> None:
        """Freeze the searched weights into the table and keep the budget's count of the largest."""
        if bool(self.pruned):
            return
        weights = self.searched()
        self.mask.copy_(magnitude_mask(weights, self.max_nnz) & (weights != 0))
        self.weight.copy_(weights * self.mask)
        self.pruned.fill_(True)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if bool(self.pruned):
            self.weight.mul_(self.mask)
        elif step >= self.search_fraction * total_steps:
            self.prune()

    def finalize(self) -> EmbeddingTable:
        self.prune()
        kept = self.weight.detach() * self.mask
        return SparseRowsTable.from_dense(kept, self.budget, field_dims=self.field_dims)
