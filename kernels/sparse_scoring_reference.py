"""Plain torch reference for sparse scoring over an inverted index, and tie-exact top-k selection.

The reference scores a batch of queries into a dense ``[B, num_docs]`` float32 matrix with one
``index_add_`` per (query, term) (term-at-a-time evaluation of an inverted index; learned sparse
retrieval, Geng et al.): ``score(q, d) = sum_t q_t * w_d(t)``. It is the ground truth that the Triton
kernel (:mod:`kernels.sparse_scoring_triton`) and the numba CPU path are tested against.

:func:`select_topk` is the top-k that both the reference and the CUDA path use: documents with a
positive score, best first, ties broken by the lower document index (``torch.topk`` alone leaves
the order of equal scores unspecified), by ranking on one int64 key per document.
"""

from __future__ import annotations

import numpy as np
import torch


def score_dense_reference(
    offsets: torch.Tensor,
    docs: torch.Tensor,
    weights: torch.Tensor,
    q_offsets: np.ndarray,
    q_terms: np.ndarray,
    q_values: np.ndarray,
    num_docs: int,
) -> torch.Tensor:
    """Dense float32 scores ``[B, num_docs]`` of a packed query batch (values pre-scaled)."""
    num_queries = len(q_offsets) - 1
    scores = torch.zeros((num_queries, num_docs), dtype=torch.float32, device=docs.device)
    for b in range(num_queries):
        for j in range(int(q_offsets[b]), int(q_offsets[b + 1])):
            t = int(q_terms[j])
            lo, hi = int(offsets[t]), int(offsets[t + 1])
            w = weights[lo:hi].to(torch.float32) * torch.tensor(q_values[j], dtype=torch.float32)
            scores[b].index_add_(0, docs[lo:hi].to(torch.int64), w)
    return scores


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k of each row of non-negative ``scores``: (docs int32, scores float32, counts int32).

    Only positive scores count; rows are padded with doc -1 / score 0 past their count. Ties go to
    the lower document index: the key ``(float bits << 32) + (2^31 - 1 - doc)`` orders like
    (score desc, doc asc) because the bit pattern of a non-negative float32 is monotone in its value.
    """
    num_queries, num_docs = scores.shape
    kk = min(k, num_docs)
    key = scores.contiguous().view(torch.int32).to(torch.int64)
    key.bitwise_left_shift_(32).add_((1 << 31) - 1 - torch.arange(num_docs, device=scores.device))
    top = torch.topk(key, kk, dim=1, sorted=True).indices
    del key
    top_scores = torch.gather(scores, 1, top)
    positive = top_scores > 0
    out_docs = torch.full((num_queries, k), -1, dtype=torch.int32, device=scores.device)
    out_scores = torch.zeros((num_queries, k), dtype=torch.float32, device=scores.device)
    out_docs[:, :kk] = torch.where(positive, top.to(torch.int32), -1)
    out_scores[:, :kk] = torch.where(positive, top_scores, 0.0)
    return out_docs, out_scores, positive.sum(dim=1).to(torch.int32)


def score_topk_reference(
    offsets: torch.Tensor,
    docs: torch.Tensor,
    weights: torch.Tensor,
    q_offsets: np.ndarray,
    q_terms: np.ndarray,
    q_values: np.ndarray,
    num_docs: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference top-k: :func:`score_dense_reference` followed by :func:`select_topk`."""
    scores = score_dense_reference(offsets, docs, weights, q_offsets, q_terms, q_values, num_docs)
    return select_topk(scores, k)
