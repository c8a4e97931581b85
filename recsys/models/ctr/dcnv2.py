"""DCN-V2 (Wang et al., WWW 2021): stacked full-rank cross layers in parallel with a deep tower.

Cross layer ``l``: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` with a full-rank ``W_l`` (``D x D``,
``D = F * dim``; not the low-rank mixture DCN-Mix). We use the *parallel* structure: the cross
network and the deep tower both read ``x_0 = flatten(e)``, and one linear layer reads
``[x_L || MLP(x_0)]``. Parallel keeps the deep tower directly on the embeddings, so a low-rank
embedding's up-projection can fold into its first FC layer (:mod:`recsys.lowrank`); the stacked
structure would put the cross network between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.table import EmbeddingTable
from recsys.models.ctr.mlp import MLP, DeepInput


class CrossLayer(nn.Module):
    """``x_0 * (W x + b) + x`` with a full-rank ``W``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNv2(nn.Module):
    """Parallel DCN-V2 over any :class:`EmbeddingTable`; ``forward(ids [B, F]) -> logits [B]``."""

    name = "dcnv2"

    def __init__(
        self,
        embedding: EmbeddingTable,
        num_fields: int,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        self.hparams = {
            "num_fields": num_fields,
            "hidden": list(hidden),
            "dropout": dropout,
            "cross_layers": cross_layers,
        }
        self.embedding = embedding
        width = num_fields * embedding.dim
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(cross_layers))
        self.deep_input = DeepInput()
        self.deep = MLP(width, hidden, dropout, out_dim=None)
        self.out = nn.Linear(width + self.deep.out_features, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        x0 = emb.flatten(1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        deep = self.deep(self.deep_input(self.embedding, ids, emb))
        return self.out(torch.cat([x, deep], dim=1)).squeeze(1)
