"""The uncompressed embedding table: one float32 row per feature, the baseline of every budget.

This is the plain embedding layer of DLRM / Wide&Deep / DeepFM / DCN (``budget`` 1.0: it stores the
full ``num_features x dim`` matrix). Rows start from N(0, ``init_std``), 1e-4 as in FuxiCTR/BARS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.table import EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError


class FullTable(EmbeddingTable):
    """``weight[num_features, dim]``; lookup is a row gather."""

    kind = "full"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if budget != 1.0:
            raise InputError("budget", f"a full table stores every row: budget must be 1.0, got {budget}")
        self.init_std = float(init_std)
        self.weight = nn.Parameter(torch.empty(num_features, dim))
        nn.init.normal_(self.weight, std=self.init_std)

    def options(self) -> dict[str, Any]:
        return {"init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup_rows(self.weight, ids)
