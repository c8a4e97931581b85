"""Full-ranking top-k evaluation of recommenders: Recall@k and NDCG@k over every item.

Follows the LightGCN reference implementation (He et al., SIGIR 2020; gusye1234/LightGCN-PyTorch):
every item is ranked for every user that has test items, the user's train items are excluded (scored
``-inf``), ``recall = hits / |test items|`` and NDCG uses binary relevance with the ideal DCG over the
first ``min(|test items|, k)`` positions; both are averaged over those users. Users are scored in
chunks, so memory stays at ``chunk x num_items`` scores (Gowalla: 29,858 x 40,981 fits easily).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recsys.models.cf import Scorer, interaction_positions
from sparsekit.errors import InputError


@dataclass
class RankingMetrics:
    """Mean Recall@k and NDCG@k over the ``users`` that have at least one test item."""

    recall: float
    ndcg: float
    k: int
    users: int


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def hit_metrics(top_items: torch.Tensor, relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user ``(recall, ndcg)`` of ranked lists ``top_items [B, k]`` against a ``[B, items]`` bool mask.

    Users must have at least one relevant item.
    """
    k = top_items.shape[1]
    hits = relevant.gather(1, top_items).double()
    num_relevant = relevant.sum(dim=1)
    discounts = _discounts(k, top_items.device)
    ideal = torch.cumsum(discounts, 0)[num_relevant.clamp(max=k) - 1]
    return hits.sum(1) / num_relevant, (hits * discounts).sum(1) / ideal


def evaluate_ranking(scorer: Scorer, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 20,
                     batch_size: int = 1024, device: torch.device | str = "cpu",
                     progress: bool = False) -> RankingMetrics:
    """Recall@k / NDCG@k of ``scorer`` (``users -> [B, num_items]``) on ``test``, ``train`` excluded."""
    if train.shape != test.shape:
        raise InputError("test", f"shape {test.shape} differs from the train matrix {train.shape}")
    num_items = train.shape[1]
    if not 1 <= k <= num_items:
        raise InputError("k", f"must be in 1..{num_items}, got {k}")
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    device = torch.device(device)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    recall_sum = ndcg_sum = 0.0
    with torch.no_grad():
        for start in tqdm(range(0, users.size, batch_size), desc="rank", disable=not progress, leave=False):
            chunk = users[start:start + batch_size]
            scores = scorer(torch.from_numpy(chunk).to(device)).float()
            if scores._base is not None:  # a view (e.g. one expanded popularity row): never write into it
                scores = scores.clone()
            scores[interaction_positions(train, chunk, device)] = float("-inf")
            top = torch.topk(scores, k, dim=1).indices
            relevant = torch.zeros(len(chunk), num_items, dtype=torch.bool, device=device)
            relevant[interaction_positions(test, chunk, device)] = True
            recall, ndcg = hit_metrics(top, relevant)
            recall_sum += float(recall.sum())
            ndcg_sum += float(ndcg.sum())
    count = max(users.size, 1)
    return RankingMetrics(recall=recall_sum / count, ndcg=ndcg_sum / count, k=k, users=int(users.size))
