"""Matrix factorisation trained with BPR (MF-BPR; Rendle et al., "BPR: Bayesian Personalized Ranking
from Implicit Feedback", UAI 2009): a user and an item embedding table, score = inner product.
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
from torch import Tensor, nn

from recsys.models.cf import DotProductModel, PairScores


class MF(DotProductModel):
    """MF-BPR with ``dim``-dimensional tables initialised from N(0, ``init_std``^2)."""

    kind = "mf"

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float = 0.1,
                 interactions: sp.csr_matrix | None = None) -> None:
        super().__init__(num_users, num_items, interactions)
        self.dim = dim
        self.init_std = init_std
        self.user_emb = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item_emb = nn.Parameter(torch.randn(num_items, dim) * init_std)

    def hparams(self) -> dict[str, Any]:
        return {"dim": self.dim, "init_std": self.init_std}

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb, self.item_emb

    def pair_scores(self, users: Tensor, pos: Tensor, neg: Tensor) -> PairScores:
        u = self.user_emb.index_select(0, users)
        p, n = self.item_emb.index_select(0, pos), self.item_emb.index_select(0, neg)
        return PairScores((u * p).sum(-1), (u * n).sum(-1), [u, p, n])

    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        return {"user_emb": self.user_emb, "item_emb": self.item_emb}
