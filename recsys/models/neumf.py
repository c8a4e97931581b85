"""NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017): a GMF tower (element-wise product of
user and item embeddings) and an MLP tower (ReLU layers over the concatenated user and item embeddings,
with their own tables), fused by one linear prediction layer into a score (a logit).

Scoring all items for a batch of users splits the first MLP layer into its user and item halves, so the
``[B, items, hidden]`` activations are built chunk by chunk over items without concatenating pairs.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.cf import CFModel, PairScores
from sparsekit.errors import InputError

_PAIRS_PER_CHUNK = 1 << 18


def tower_sizes(dim: int, layers: int) -> list[int]:
    """Hidden widths of the MLP tower: ``dim, dim/2, ...`` (``layers`` of them, at least 1 each)."""
    return [max(dim >> depth, 1) for depth in range(layers)]


class NeuMF(CFModel):
    """NeuMF with ``dim``-dimensional GMF and MLP tables and ``layers`` MLP layers."""

    kind = "neumf"

    def __init__(self, num_users: int, num_items: int, dim: int = 64, layers: int = 3, init_std: float = 0.1,
                 interactions: sp.csr_matrix | None = None) -> None:
        super().__init__(num_users, num_items, interactions)
        if layers < 1:
            raise InputError("layers", f"NeuMF needs at least one MLP layer, got {layers}")
        self.dim = dim
        self.layers = layers
        self.init_std = init_std
        self.gmf_user = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.gmf_item = nn.Parameter(torch.randn(num_items, dim) * init_std)
        self.mlp_user = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.mlp_item = nn.Parameter(torch.randn(num_items, dim) * init_std)
        widths = [2 * dim, *tower_sizes(dim, layers)]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.predict = nn.Linear(dim + widths[-1], 1)

    def hparams(self) -> dict[str, Any]:
        return {"dim": self.dim, "layers": self.layers, "init_std": self.init_std}

    def _tower(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.mlp[1:]:
            hidden = F.relu(layer(hidden))
        return hidden

    def _scores(self, users: Tensor, items: Tensor) -> tuple[Tensor, list[Tensor]]:
        ego = [t.index_select(0, i) for t, i in ((self.gmf_user, users), (self.gmf_item, items),
                                                 (self.mlp_user, users), (self.mlp_item, items))]
        gmf = ego[0] * ego[1]
        mlp = self._tower(F.relu(self.mlp[0](torch.cat(ego[2:], -1))))
        return self.predict(torch.cat([gmf, mlp], -1)).squeeze(-1), ego

    def pair_scores(self, users: Tensor, pos: Tensor, neg: Tensor) -> PairScores:
        pos_scores, pos_ego = self._scores(users, pos)
        neg_scores, neg_ego = self._scores(users, neg)
        return PairScores(pos_scores, neg_scores, [*pos_ego, *neg_ego[1::2]])

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        first = self.mlp[0]
        w_gmf, w_mlp = self.predict.weight[0, :self.dim], self.predict.weight[0, self.dim:]
        gmf = (self.gmf_user[users] * w_gmf) @ self.gmf_item.T + self.predict.bias
        user_half = self.mlp_user[users] @ first.weight[:, :self.dim].T
        item_half = self.mlp_item @ first.weight[:, self.dim:].T + first.bias
        chunk = max(_PAIRS_PER_CHUNK // max(len(users), 1), 1)
        mlp = [self._tower(F.relu(user_half[:, None, :] + item_half[None, start:start + chunk, :])) @ w_mlp
               for start in range(0, self.num_items, chunk)]
        return gmf + torch.cat(mlp, dim=1)

    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        tables = {"gmf_user": self.gmf_user, "gmf_item": self.gmf_item, "mlp_user": self.mlp_user,
                  "mlp_item": self.mlp_item}
        return tables | {f"mlp.{i}.weight": layer.weight for i, layer in enumerate(self.mlp)}
