"""IDF-aware matching: the inference-free score ``sum_t relu(idf[t]) * q(t) * w_d(t)``.

Geng et al., "Towards Competitive Search Relevance For Inference-Free Learned Sparse Retrievers"
(2024), "IDF-aware FLOPS": the query side is a binary bag of tokens, and the IDF table enters through
the *matching function* used by the ranking loss,

    s(q, d) = sum_t bow_q(t) * relu(idf[t]) * w_d(t),

so d s / d w_d(t) = relu(idf[t]) for every query token t. The ranking-loss gradient on a document
weight is therefore scaled by that token's IDF, while the FLOPS penalty (:mod:`.flops`) pushes on all
tokens alike: low-IDF (stop-word-like) document terms lose that tug of war and are driven to zero,
high-IDF terms survive. :func:`plain_scores` drops the IDF (binary query) for the ablation.

Shapes: queries ``[B, V]`` (binary, or any non-negative weights), documents ``[N, V]`` for in-batch
scoring (every query against every document) or ``[B, C, V]`` for per-query candidates.
"""

from __future__ import annotations

import torch


def _idf_query(query_bow: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    if idf.dim() != 1 or idf.shape[0] != query_bow.shape[-1]:
        raise ValueError(f"idf must be [V={query_bow.shape[-1]}], got shape {tuple(idf.shape)}")
    return query_bow * torch.relu(idf)


def plain_scores(query_bow: torch.Tensor, doc_weights: torch.Tensor) -> torch.Tensor:
    """Binary-query scores ``query_bow @ doc_weights^T``: [B, V] x [N, V] -> [B, N] (no IDF)."""
    if query_bow.dim() != 2 or doc_weights.dim() != 2 or query_bow.shape[1] != doc_weights.shape[1]:
        raise ValueError(f"need [B, V] and [N, V], got {tuple(query_bow.shape)} "
                         f"and {tuple(doc_weights.shape)}")
    return query_bow @ doc_weights.T


def plain_candidate_scores(query_bow: torch.Tensor, doc_weights: torch.Tensor) -> torch.Tensor:
    """Binary-query scores of each query's own candidates: [B, V] x [B, C, V] -> [B, C] (no IDF)."""
    if doc_weights.dim() != 3 or doc_weights.shape[0] != query_bow.shape[0] \
            or doc_weights.shape[2] != query_bow.shape[-1]:
        raise ValueError(f"need [B, V] and [B, C, V], got {tuple(query_bow.shape)} "
                         f"and {tuple(doc_weights.shape)}")
    return torch.einsum("bv,bcv->bc", query_bow, doc_weights)


def idf_aware_scores(query_bow: torch.Tensor, idf: torch.Tensor, doc_weights: torch.Tensor) -> torch.Tensor:
    """``(query_bow * relu(idf)) @ doc_weights^T``: [B, V], [V], [N, V] -> [B, N]."""
    return plain_scores(_idf_query(query_bow, idf), doc_weights)


def idf_aware_candidate_scores(query_bow: torch.Tensor, idf: torch.Tensor,
                               doc_weights: torch.Tensor) -> torch.Tensor:
    """Per-query candidate scores with IDF weighting: [B, V], [V], [B, C, V] -> [B, C]."""
    return plain_candidate_scores(_idf_query(query_bow, idf), doc_weights)
