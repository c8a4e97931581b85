"""Wide & Deep (Cheng et al., DLRS 2016): a linear model over the one-hot fields plus a deep tower.

``logit = bias + sum_f w[x_f] + MLP(flatten(e))``. The wide part is the linear model over the raw
one-hot features (a dim-1 table); the paper's hand-crafted cross-product transformations are left out,
as in the BARS / FuxiCTR benchmark version. The deep tower reads the ``dim``-16 embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.full import FullTable
from embeddings.table import EmbeddingTable
from recsys.models.ctr.mlp import MLP, DeepInput


class WideDeep(nn.Module):
    """Wide & Deep over any :class:`EmbeddingTable`; ``forward(ids [B, F]) -> logits [B]``."""

    name = "wdl"

    def __init__(
        self,
        embedding: EmbeddingTable,
        num_fields: int,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        first_order: EmbeddingTable | None = None,
    ) -> None:
        super().__init__()
        self.hparams = {"num_fields": num_fields, "hidden": list(hidden), "dropout": dropout}
        self.embedding = embedding
        self.first_order = first_order or FullTable(
            embedding.num_features, 1, field_dims=embedding.field_dims
        )
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep_input = DeepInput()
        self.deep = MLP(num_fields * embedding.dim, hidden, dropout, out_dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.wide_and_deep(ids, self.embedding(ids))

    def wide_and_deep(self, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The wide (first-order + bias) and deep logits of ``ids`` given their embeddings ``emb``."""
        wide = self.first_order.lookup(ids).sum(dim=(1, 2)) + self.bias
        return wide + self.deep(self.deep_input(self.embedding, ids, emb)).squeeze(1)
