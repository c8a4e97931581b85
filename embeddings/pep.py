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

from embeddings.search_prune import SearchThenPruneTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError

GRANULARITIES = ("global", "dimension", "feature", "feature_dimension")


class PEPTable(SearchThenPruneTable):
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
        if granularity not in GRANULARITIES:
            raise InputError("granularity", f"one of {GRANULARITIES}, got {granularity!r}")
        super().__init__(num_features, dim, budget, field_dims=field_dims, search_fraction=search_fraction,
                         init_std=init_std)
        self.granularity, self.threshold_init = granularity, float(threshold_init)
        rows = num_features if granularity.startswith("feature") else 1
        cols = dim if granularity.endswith("dimension") else 1
        self.threshold = nn.Parameter(torch.full((rows, cols), self.threshold_init))

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

    def searched(self) -> torch.Tensor:
        """``S(v, s)`` of every row."""
        return self._soft_threshold(self.weight, None)

    def search_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self._soft_threshold(lookup_rows(self.weight, ids), ids)

    def learned_sparsity(self) -> float:
        """Fraction of weights the thresholds currently zero."""
        with torch.no_grad():
            return float((self.searched() == 0).float().mean())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, thresholds={self.granularity}, keep={self.max_nnz} ({self.layout})"
