"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a deep tower over shared embeddings.

``logit = bias + sum_f w[x_f] + FM(e) + MLP(flatten(e))``, where ``w`` is a first-order (dim-1) table,
``e`` the ``[B, F, dim]`` embeddings of the ``F`` one-hot fields and ``FM(e) = 1/2 sum_d((sum_f e_fd)^2 -
sum_f e_fd^2)`` the sum of all pairwise inner products. Embedding dim 16 and a 400-400-400 tower
follow the BARS / VLDB'24 benchmark settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.full import FullTable
from embeddings.table import EmbeddingTable
from recsys.models.ctr.mlp import MLP, DeepInput


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise inner products of the ``[B, F, dim]`` field embeddings, as ``[B]``."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_squares = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class DeepFM(nn.Module):
    """DeepFM over any :class:`EmbeddingTable`; ``forward(ids [B, F]) -> logits [B]``."""

    name = "deepfm"

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
        emb = self.embedding(ids)
        linear = self.first_order.lookup(ids).sum(dim=(1, 2)) + self.bias
        deep = self.deep(self.deep_input(self.embedding, ids, emb)).squeeze(1)
        return linear + fm_interaction(emb) + deep
