"""The common interface of collaborative-filtering models and the top-k recommender built on it.

Every CF model here (MF-BPR, LightGCN, NeuMF) is trained with the BPR pairwise loss (Rendle et al.,
UAI 2009) and scores every item for a batch of users. :class:`CFModel` fixes that small interface:
``pair_scores`` for training (scores plus the batch's input embedding rows, the target of the
LightGCN-style L2 term), ``score_all`` for full ranking, and ``sparse_parameters`` naming the tensors
that dynamic sparse training (:mod:`recsys.dsl`) masks and that :mod:`recsys.sparse_export` stores
sparsely. A model keeps the train interactions it was fitted on, so a :class:`Recommender` built from
it can exclude seen items.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsekit.errors import InputError, NotFoundError

Scorer = Callable[[torch.Tensor], torch.Tensor]


def _empty_interactions(num_users: int, num_items: int) -> sp.csr_matrix:
    return sp.csr_matrix((num_users, num_items), dtype=np.float32)


class PairScores(NamedTuple):
    """BPR forward pass of a batch: ``[B]`` positive and negative scores, and the input (layer-0)
    embedding rows the batch used, the target of the L2 term of :meth:`CFModel.bpr_loss`."""

    pos: Tensor
    neg: Tensor
    ego: list[Tensor]


class CFModel(nn.Module, ABC):
    """A user x item scoring model trained with BPR; subclasses set ``kind`` and implement the scorers."""

    kind: ClassVar[str]

    def __init__(self, num_users: int, num_items: int, interactions: sp.csr_matrix | None = None) -> None:
        super().__init__()
        if num_users <= 0 or num_items <= 0:
            raise InputError("num_users/num_items", f"must be positive, got {num_users} x {num_items}")
        self.num_users = num_users
        self.num_items = num_items
        if interactions is None:
            interactions = _empty_interactions(num_users, num_items)
        if interactions.shape != (num_users, num_items):
            raise InputError("interactions", f"shape {interactions.shape} != ({num_users}, {num_items})")
        self.interactions = sp.csr_matrix(interactions, dtype=np.float32)

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments besides the sizes and interactions (enough to rebuild the model)."""

    @abstractmethod
    def pair_scores(self, users: Tensor, pos: Tensor, neg: Tensor) -> PairScores:
        """Scores of (user, positive) and (user, negative) pairs and the batch's ego embedding rows."""

    @abstractmethod
    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for ``users``: ``[B, num_items]``."""

    @abstractmethod
    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        """The weight matrices that sparse training masks and sparse export stores row-sparse."""

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                 weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total, bpr)``: mean ``softplus(neg - pos)`` plus LightGCN's L2 on the batch's ego embeddings.

        The L2 term is ``weight_decay * 0.5 * sum ||e||^2 / B`` over the user, positive and negative
        ego rows (He et al. 2020, reference implementation).
        """
        scores = self.pair_scores(users, pos, neg)
        bpr = F.softplus(scores.neg - scores.pos).mean()
        if weight_decay == 0.0:
            return bpr, bpr
        reg = sum(e.pow(2).sum() for e in scores.ego) * (0.5 / users.numel())
        return bpr + weight_decay * reg, bpr

    def scorer(self) -> Scorer:
        """A ``users -> [B, num_items]`` function for serving; models precompute what they can."""
        return self.score_all

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class DotProductModel(CFModel):
    """A model whose score is the inner product of final user and item embeddings (MF, LightGCN)."""

    @abstractmethod
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final ``[num_users, d]`` and ``[num_items, d]`` embeddings."""

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.final_embeddings()
        return user_emb[users] @ item_emb.T

    def scorer(self) -> Scorer:
        with torch.no_grad():
            user_emb, item_emb = (t.detach() for t in self.final_embeddings())
        return lambda users: user_emb[users] @ item_emb.T


def check_user_ids(user_ids: Any, num_users: int) -> np.ndarray:
    """``user_ids`` as a 1-D int64 array; a non-integer raises InputError, an unknown id NotFoundError."""
    ids = np.asarray(user_ids)
    if ids.ndim == 0:
        ids = ids.reshape(1)
    if ids.ndim != 1:
        raise InputError("user_ids", f"expected a 1-D array of user ids, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InputError("user_ids", f"user ids must be integers, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= num_users)]  # before the cast: a uint64 id past 2**63 would wrap negative
    if bad.size:
        raise NotFoundError(f"user id {int(bad[0])} not found (known ids are 0..{num_users - 1})")
    return ids.astype(np.int64)


def interaction_positions(interactions: sp.csr_matrix, users: np.ndarray,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, col)`` index tensors, rows in batch coordinates, of the items each of ``users`` has."""
    rows = interactions[users]
    counts = np.diff(rows.indptr)
    row_idx = np.repeat(np.arange(len(users)), counts)
    return (torch.from_numpy(row_idx).to(device), torch.from_numpy(rows.indices.astype(np.int64)).to(device))


class Recommender:
    """Top-k item recommendation over every item from a batch scorer, optionally excluding seen items.

    Dense trained models and sparse exports (:func:`recsys.sparse_export.load_sparse`) both serve through
    this class, so they answer identically for identical weights.
    """

    def __init__(self, scorer: Scorer, num_users: int, num_items: int, seen: sp.csr_matrix,
                 device: torch.device | str = "cpu", batch_size: int = 1024) -> None:
        self.score = scorer
        self.num_users = num_users
        self.num_items = num_items
        self.seen = seen
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_model(cls, model: CFModel, batch_size: int = 1024) -> Recommender:
        """Serve a (dense or masked) trained model; excluded items are its train interactions."""
        model.eval()
        return cls(model.scorer(), model.num_users, model.num_items, model.interactions, model.device,
                   batch_size)

    def recommend(self, user_ids: Any, k: int = 20,
                  exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(item_ids [B, k] int64, scores [B, k] float32)``, best first.

        An unknown user id raises :class:`~sparsekit.errors.NotFoundError` naming it. With
        ``exclude_seen`` a user's train items score ``-inf`` (so they come last if k exceeds the rest).
        """
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.num_items:
            raise InputError("k", f"must be an integer in 1..{self.num_items}, got {k!r}")
        users = check_user_ids(user_ids, self.num_users)
        items = np.empty((users.size, k), dtype=np.int64)
        scores = np.empty((users.size, k), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, users.size, self.batch_size):
                chunk = users[start:start + self.batch_size]
                batch = self.score(torch.from_numpy(chunk).to(self.device)).float()
                if exclude_seen:
                    batch[interaction_positions(self.seen, chunk, batch.device)] = float("-inf")
                top = torch.topk(batch, k, dim=1)
                items[start:start + len(chunk)] = top.indices.cpu().numpy()
                scores[start:start + len(chunk)] = top.values.cpu().numpy()
        return items, scores
