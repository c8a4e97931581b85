"""DLRM (Naumov et al., 2019): embeddings, pairwise dot-product interactions and a top MLP.

DLRM sends dense features through a bottom MLP and concatenates its output with the dot products
of every pair of vectors. Our CTR data (Frappe, MovieLens, the synthetic generator) has only
categorical fields, so the bottom MLP is absent; in its place the top MLP reads the flattened field
embeddings next to the ``F (F - 1) / 2`` pairwise dot products (upper triangle, no self-interaction):
``logit = top_MLP([flatten(e) || <e_i, e_j>_{i<j}])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.table import EmbeddingTable
from recsys.models.ctr.mlp import MLP


class DLRM(nn.Module):
    """DLRM without dense features over any :class:`EmbeddingTable`; ``forward(ids) -> logits [B]``."""

    name = "dlrm"

    def __init__(
        self,
        embedding: EmbeddingTable,
        num_fields: int,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hparams = {"num_fields": num_fields, "hidden": list(hidden), "dropout": dropout}
        self.embedding = embedding
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        pairs = num_fields * (num_fields - 1) // 2
        self.top = MLP(num_fields * embedding.dim + pairs, hidden, dropout, out_dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        dots = torch.bmm(emb, emb.transpose(1, 2))[:, self.pair_rows, self.pair_cols]
        return self.top(torch.cat([emb.flatten(1), dots], dim=1)).squeeze(1)
