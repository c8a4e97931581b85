"""PEP: plug-in embedding pruning with learnable soft thresholds (Liu et al., "Learnable Embedding Sizes
for Recommender Systems", ICLR 2021).

Each weight is read through the soft-threshold reparameterisation ``S(v, s) = sign(v) * relu(|v| - g(s))``
with ``g = sigmoid`` and a trainable threshold ``s``; weights below their threshold read as exact zeros,
so the loss (with the trainer's L2 on the looked-up rows) learns how much of each row to drop. PEP then
retrains the model with the learned mask (lottery-ticket style).

Design choices:

- Threshold granularity ``"global"``, ``"dimension"`` (default), ``"feature"`` or ``"feature_dimension"``,
  the four of the paper / the VLDB 2024 benchmark code; ``threshold_init`` -15 (``g(s) = 3e-7``, so
  training starts dense).
- Search and retraining share one run: after ``search_fraction`` of the trainer's total steps the
  learned sparse weights ``S(v, s)`` are frozen into a mask, **pruned further by magnitude when the
  learned sparsity does not reach the budget** (typical in short runs: ``g(s)`` moves slowly under
  Adam), and training continues on the kept weights only (the paper retrains from the initial weights).
  A checkpoint restored from before that point is pruned the same way in :meth:`PEPTable.finalize`.
- Budget: the kept-weight count is what :func:`~embeddings.csr_rows.sparse_budget` allows once the
  CSR / COO index is paid for; the serving table is :class:`~embeddings.csr_rows.SparseRowsTable`.
  :class:`BudgetError` only when not one weight fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.csr_rows import SparseRowsTable, magnitude_mask, sparse_budget
from embeddings.table import EmbeddingTable
from sparsekit.errors import InputError

GRANULARITIES = ("global", "dimension", "feature", "feature_dimension")


class PEPTable(EmbeddingTable):
    """Soft-thresholded weights with learnable thresholds; pruned to the budget and served sparse."""

    kind = "pep"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        granularity: str = "dimension",
        threshold_init: float = -15.0,
        search_fraction: float = 0.1,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if granularity not in GRANULARITIES:
            raise InputError("granularity", f"one of {GRANULARITIES}, got {granularity!r}")
        if not 0.0 <= search_fraction <= 1.0:
            raise InputError("search_fraction", f"must be in [0, 1], got {search_fraction}")
        self.layout, self.max_nnz = sparse_budget(self)
        self.granularity, self.threshold_init = granularity, float(threshold_init)
        self.search_fraction, self.init_std = float(search_fraction), float(init_std)
        rows = num_features if granularity.startswith("feature") else 1
        cols = dim if granularity.endswith("dimension") else 1
        self.weight = nn.Parameter(torch.randn(num_features, dim) * self.init_std)
        self.threshold = nn.Parameter(torch.full((rows, cols), self.threshold_init))
        self.register_buffer("mask", torch.ones(num_features, dim, dtype=torch.bool))
        self.register_buffer("pruned", torch.tensor(False))

    def options(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "threshold_init": self.threshold_init,
            "search_fraction": self.search_fraction,
            "init_std": self.init_std,
        }

    def _soft_threshold(self, weight: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        threshold = self.threshold if ids is None or self.threshold.shape[0] == 1 else self.threshold[ids]
        return weight.sign() * torch.relu(weight.abs() - torch.sigmoid(threshold))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids]
        if bool(self.pruned):
            return rows * self.mask[ids]
        return self._soft_threshold(rows, ids)

    def learned_sparsity(self) -> float:
        """Fraction of weights the thresholds currently zero."""
        with torch.no_grad():
            return float((self._soft_threshold(self.weight, None) == 0).float().mean())

    @torch.no_grad()
    def prune(self) -> None:
        """Freeze ``S(v, s)`` into the weights and keep at most the budget's count (by magnitude)."""
        if bool(self.pruned):
            return
        sparse = self._soft_threshold(self.weight, None)
        self.mask.copy_(magnitude_mask(sparse, self.max_nnz) & (sparse != 0))
        self.weight.copy_(sparse * self.mask)
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, thresholds={self.granularity}, keep={self.max_nnz} ({self.layout})"
