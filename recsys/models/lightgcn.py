"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020).

User and item ego embeddings are propagated K times over the symmetric-normalised user-item graph
``A_hat = D^-1/2 A D^-1/2`` with no feature transform and no nonlinearity; the final embedding is the
mean of the K + 1 layer embeddings and the score is their inner product. The graph is bipartite, so a
layer is two sparse products with ``R_hat = D_u^-1/2 R D_i^-1/2`` and its transpose (torch sparse CSR,
which runs on CPU and CUDA); the backward pass multiplies by the precomputed transpose.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from recsys.models.cf import DotProductModel, PairScores


def normalized_adjacency(interactions: sp.csr_matrix) -> sp.csr_matrix:
    """``D_u^-1/2 R D_i^-1/2`` of a binary users x items matrix; nodes of degree 0 get weight 0."""
    matrix = sp.csr_matrix(interactions, dtype=np.float32)
    matrix.data[:] = 1.0
    user_deg = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    item_deg = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        du = np.where(user_deg > 0, user_deg ** -0.5, 0.0)
        di = np.where(item_deg > 0, item_deg ** -0.5, 0.0)
    return sp.csr_matrix(sp.diags(du) @ matrix @ sp.diags(di), dtype=np.float32)


def _torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    matrix = matrix.tocsr()
    matrix.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data.astype(np.float32)),
                                       size=matrix.shape, device=device, check_invariants=True)


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ dense`` whose gradient uses a precomputed ``matrix.T`` (a CSR transpose is costly)."""

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, matrix_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.matrix_t = matrix_t
        return matrix @ dense

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, ctx.matrix_t @ grad.contiguous()


class LightGCN(DotProductModel):
    """LightGCN with ``layers`` propagation layers over the train ``interactions`` graph."""

    kind = "lightgcn"

    def __init__(self, num_users: int, num_items: int, dim: int = 64, layers: int = 3, init_std: float = 0.1,
                 interactions: sp.csr_matrix | None = None) -> None:
        super().__init__(num_users, num_items, interactions)
        self.dim = dim
        self.layers = layers
        self.init_std = init_std
        self.user_emb = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item_emb = nn.Parameter(torch.randn(num_items, dim) * init_std)
        self._norm = normalized_adjacency(self.interactions)
        self._graph: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def hparams(self) -> dict[str, Any]:
        return {"dim": self.dim, "layers": self.layers, "init_std": self.init_std}

    def graph(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R_hat, R_hat.T)`` as torch CSR tensors on ``device`` (built once per device)."""
        if device not in self._graph:
            self._graph[device] = (_torch_csr(self._norm, device), _torch_csr(self._norm.T.tocsr(), device))
        return self._graph[device]

    def propagate(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over layers 0..K of the propagated user and item embeddings."""
        norm, norm_t = self.graph(user_emb.device)
        users, items = user_emb, item_emb
        user_sum, item_sum = user_emb, item_emb
        for _ in range(self.layers):
            users, items = _SparseMatmul.apply(norm, norm_t, items), _SparseMatmul.apply(norm_t, norm, users)
            user_sum, item_sum = user_sum + users, item_sum + items
        scale = 1.0 / (self.layers + 1)
        return user_sum * scale, item_sum * scale

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.user_emb, self.item_emb)

    def pair_scores(self, users: Tensor, pos: Tensor, neg: Tensor) -> PairScores:
        user_emb, item_emb = self.final_embeddings()
        u = user_emb.index_select(0, users)
        scores = ((u * item_emb.index_select(0, items)).sum(-1) for items in (pos, neg))
        ego = [self.user_emb.index_select(0, users), self.item_emb.index_select(0, pos),
               self.item_emb.index_select(0, neg)]
        return PairScores(*scores, ego)

    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        return {"user_emb": self.user_emb, "item_emb": self.item_emb}
