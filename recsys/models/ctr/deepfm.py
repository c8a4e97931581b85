"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a deep tower over shared embeddings.

``logit = bias + sum_f w[x_f] + FM(e) + MLP(flatten(e))``, where ``w`` is a first-order (dim-1) table,
``e`` the ``[B, F, dim]`` embeddings of the ``F`` one-hot fields and ``FM(e) = 1/2 sum_d((sum_f e_fd)^2 -
sum_f e_fd^2)`` the sum of all pairwise inner products. Embedding dim 16 and a 400-400-400 tower
follow the BARS / VLDB'24 benchmark settings.
"""

from __future__ import annotations

import torch

from recsys.models.ctr.wdl import WideDeep


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise inner products of the ``[B, F, dim]`` field embeddings, as ``[B]``."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_squares = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class DeepFM(WideDeep):
    """DeepFM over any :class:`EmbeddingTable`: Wide & Deep's first-order and deep parts plus the FM
    interaction of the same embeddings; ``forward(ids [B, F]) -> logits [B]``."""

    name = "deepfm"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids)
        return self.wide_and_deep(ids, emb) + fm_interaction(emb)
