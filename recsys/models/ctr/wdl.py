"""Wide & Deep (Cheng et al., DLRS 2016): a linear model over the one-hot fields plus a deep tower.

``logit = bias + sum_f w[x_f] + MLP(flatten(e))``. The wide part is the linear model over the raw
one-hot features (a dim-1 table); the paper's hand-crafted cross-product transformations are left out,
as in the BARS / FuxiCTR benchmark version. The deep tower reads the ``dim``-16 embeddings.

``wide="projected"`` replaces the first-order table by a projection of the embeddings themselves:
``w[x_f] = <e_f, u_f>`` with one learned ``dim``-vector ``u_f`` per field, i.e. ``num_fields x dim`` floats
instead of one float per feature. Under a memory budget that charges every embedding-side byte, a full
first-order table can take much of it (on Frappe 21.5 KB, 62% of a 10% budget of the dim-16 table);
the projection costs 640 bytes there and is as compressed as the embedding table it reads. This ties the
linear terms to the embeddings with one vector per field, as the FeLV linear terms of field-weighted FMs
do (Pan et al., WWW 2018).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.full import FullTable
from embeddings.table import FLOAT_BYTES, EmbeddingTable
from recsys.models.ctr.mlp import MLP, DeepInput
from sparsekit.errors import InputError

WIDE = ("table", "projected")  # the first-order part: a dim-1 table, or a per-field projection of e


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
        wide: str = "table",
    ) -> None:
        super().__init__()
        if wide not in WIDE:
            raise InputError("wide", f"one of {WIDE}, got {wide!r}")
        if wide == "projected" and first_order is not None:
            raise InputError("first_order", "wide='projected' reads no first-order table")
        self.hparams = {"num_fields": num_fields, "hidden": list(hidden), "dropout": dropout}
        if wide != "table":  # recorded only then: versions before ``wide`` still load table-mode models
            self.hparams["wide"] = wide
        self.embedding = embedding
        self.first_order = None if wide == "projected" else first_order or FullTable(
            embedding.num_features, 1, field_dims=embedding.field_dims
        )
        self.wide_projection = (nn.Parameter(torch.zeros(num_fields, embedding.dim))
                                if wide == "projected" else None)
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep_input = DeepInput()
        self.deep = MLP(num_fields * embedding.dim, hidden, dropout, out_dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.wide_and_deep(ids, self.embedding(ids))

    def first_order_logit(self, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``sum_f w[x_f]`` as ``[B]``: read from the first-order table, or projected from ``emb``."""
        if self.wide_projection is not None:
            return (emb * self.wide_projection).sum(dim=(1, 2))
        return self.first_order.lookup(ids).sum(dim=(1, 2))

    def first_order_bytes(self) -> int:
        """Bytes the first-order part stores: its table's, or the projection's floats."""
        if self.wide_projection is not None:
            return self.wide_projection.numel() * FLOAT_BYTES
        return self.first_order.memory_bytes()

    def wide_and_deep(self, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The wide (first-order + bias) and deep logits of ``ids`` given their embeddings ``emb``."""
        deep = self.deep(self.deep_input(self.embedding, ids, emb)).squeeze(1)
        return self.first_order_logit(ids, emb) + self.bias + deep
