"""AutoSrh: embedding dimensionality search by learned saliency (Kong et al., "AutoSrh: An Embedding
Dimensionality Search Framework for Tabular Data Prediction", TKDE 2022).

Features are split into groups; every (group, dimension) pair has a saliency weight ``alpha[g, d]``
(initially 1) that scales that dimension of every row of the group: ``e_x = v_x * alpha[g(x)]``. An L1
penalty on ``alpha`` (:meth:`AutoSrhTable.penalty`) drives unneeded dimensions of a group towards zero,
which relaxes the discrete choice of each group's dimensions to a continuous one. The table is then
pruned to the budget by the salient magnitude ``|v_x,d * alpha[g(x), d]|`` and retrained with that mask.

Design choices:

- Groups: the paper (and the VLDB 2024 benchmark's code) groups features by frequency, which a table
  cannot see at construction; here a group is a field (``field_dims``) or a contiguous id block
  (``blocks=``, which is a frequency group when ids are numbered by frequency), else the whole table.
- ``alpha`` is trained jointly with the weights by the trainer's optimizer (the paper alternates
  weight and saliency updates, DARTS-style) with penalty ``l1 * sum|alpha|``.
- Search and retraining share one run: after ``search_fraction`` of the trainer's total steps
  ``alpha`` is folded into the weights, the budget's count of weights with the largest ``|v * alpha|``
  is kept (unstructured, as the benchmark's CSR retraining stage) and training continues on them. A
  checkpoint restored from before that point is pruned the same way in :meth:`finalize`.
- Budget: as for PEP / DeepLight, the kept count is what fits next to the CSR / COO index
  (:func:`~embeddings.csr_rows.sparse_budget`); :class:`BudgetError` only when not one weight fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.search_prune import SearchThenPruneTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError


class AutoSrhTable(SearchThenPruneTable):
    """Weights scaled by per-(group, dimension) saliencies under an L1 penalty; pruned and served sparse."""

    kind = "autosrh"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        l1: float = 1e-4,
        search_fraction: float = 0.1,
        init_std: float = 1e-4,
    ) -> None:
        if l1 < 0:
            raise InputError("l1", f"must be >= 0, got {l1}")
        super().__init__(num_features, dim, budget, field_dims=field_dims, search_fraction=search_fraction,
                         init_std=init_std)
        self.blocks = tuple(int(b) for b in (blocks or self.field_dims or (num_features,)))
        if min(self.blocks) < 1 or sum(self.blocks) != num_features:
            raise InputError("blocks", f"block sizes {self.blocks} must be >= 1 and sum to {num_features}")
        self.l1 = float(l1)
        self.saliency = nn.Parameter(torch.ones(len(self.blocks), dim))
        ends = torch.tensor(self.blocks).cumsum(0)
        self.register_buffer("block_ends", ends, persistent=False)

    def options(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "l1": self.l1,
            "search_fraction": self.search_fraction,
            "init_std": self.init_std,
        }

    def group_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The saliency group (block) of each id."""
        return torch.bucketize(ids, self.block_ends, right=True)

    def searched(self) -> torch.Tensor:
        """``v * alpha[g]`` of every row: the salient magnitudes pruning keeps the largest of."""
        every = torch.arange(self.num_features, device=self.weight.device)
        return self.weight * self.saliency[self.group_of(every)]

    def search_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup_rows(self.weight, ids) * self.saliency[self.group_of(ids)]

    def penalty(self) -> torch.Tensor | None:
        if bool(self.pruned) or self.l1 == 0:
            return None
        return self.l1 * self.saliency.abs().sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={len(self.blocks)}, keep={self.max_nnz} ({self.layout})"
