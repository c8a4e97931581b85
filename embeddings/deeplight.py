"""DeepLight's embedding pruning (Deng et al., "DeepLight: Deep Lightweight Feature Interactions for
Accelerating CTR Predictions in Ad Serving", WSDM 2021).

DeepLight prunes the embedding table during training by weight magnitude, raising the sparsity
gradually so the model adapts: every ``prune_every`` steps the smallest-``|w|`` weights are masked to
the current target ``s_t = s * (1 - D^(t / U))`` (the paper's damping schedule, ``D = 0.99``), and the
mask is re-applied after every optimizer step so pruned weights stay zero (a pruned weight has
magnitude 0, so it is never revived).

Design choices:

- The final sparsity ``s`` is set by the budget, not chosen: the serving table is
  :class:`~embeddings.csr_rows.SparseRowsTable` and its index counts against the budget, so the number
  of kept weights is what :func:`~embeddings.csr_rows.sparse_budget` allows after the row pointers /
  keys (CSR, or COO at budgets below the row pointers' size: on Frappe 4,719 weights of 86,112 at
  budget 0.1, 420 at 0.01, 33 at 0.001).
- The paper's ``U = 100`` steps assumes millions of steps; here ``U`` is set so the schedule reaches 99%
  of ``s`` after ``ramp_fraction`` of the trainer's total steps and ``s`` exactly from then on.
  :meth:`DeepLightTable.finalize` prunes to the exact budget by magnitude in any case (e.g. after an
  early stop), then packs.
- Only the embedding table is pruned (the paper also prunes the DNN weights and the field-pair matrix of
  its DeepFwFM): those belong to the model, not to the table.
- :class:`BudgetError` only when not one weight and its index fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.csr_rows import SparseRowsTable, magnitude_mask, sparse_budget
from embeddings.table import EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError

DAMPING = 0.99


class DeepLightTable(EmbeddingTable):
    """A dense table gradually magnitude-pruned to the budget's weight count; served as CSR / COO."""

    kind = "deeplight"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        ramp_fraction: float = 0.1,
        prune_every: int = 10,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if not 0.0 < ramp_fraction <= 1.0:
            raise InputError("ramp_fraction", f"must be in (0, 1], got {ramp_fraction}")
        if prune_every < 1:
            raise InputError("prune_every", f"must be >= 1, got {prune_every}")
        self.layout, self.max_nnz = sparse_budget(self)
        self.ramp_fraction, self.prune_every = float(ramp_fraction), int(prune_every)
        self.init_std = float(init_std)
        self.weight = nn.Parameter(torch.randn(num_features, dim) * self.init_std)
        self.register_buffer("mask", torch.ones(num_features, dim, dtype=torch.bool))

    @property
    def final_sparsity(self) -> float:
        return 1.0 - self.max_nnz / (self.num_features * self.dim)

    def options(self) -> dict[str, Any]:
        return {
            "ramp_fraction": self.ramp_fraction,
            "prune_every": self.prune_every,
            "init_std": self.init_std,
        }

    @property
    def settled(self) -> bool:
        """The ramp has reached the budget's sparsity."""
        return int(self.mask.sum()) <= self.max_nnz

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup_rows(self.weight, ids) * self.mask[ids]

    def sparsity_at(self, step: int, total_steps: int) -> float:
        """The damping schedule ``s * (1 - D^(t / U))``, reaching ``s`` at the end of the ramp."""
        ramp = max(1.0, self.ramp_fraction * total_steps)
        if step >= ramp:
            return self.final_sparsity
        unit = ramp * math.log(DAMPING) / math.log(0.01)  # D^(ramp / U) = 0.01
        return self.final_sparsity * (1.0 - DAMPING ** (step / unit))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if step % self.prune_every == 0 or step >= self.ramp_fraction * total_steps:
            keep = round((1.0 - self.sparsity_at(step, total_steps)) * self.mask.numel())
            if keep < int(self.mask.sum()):
                self.mask.copy_(magnitude_mask(self.weight * self.mask, max(keep, self.max_nnz)))
        self.weight.mul_(self.mask)

    def finalize(self) -> EmbeddingTable:
        weight = self.weight.detach() * self.mask
        kept = weight * magnitude_mask(weight, self.max_nnz)
        return SparseRowsTable.from_dense(kept, self.budget, field_dims=self.field_dims)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.max_nnz} ({self.layout})"
