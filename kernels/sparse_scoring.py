"""Dispatcher for sparse scoring over an inverted index: Triton on CUDA, numba on CPU.

Scores a batch of sparse queries against term-major postings (term-at-a-time evaluation of an
inverted index; learned sparse retrieval, Geng et al.) and returns the exact top-k per query:
documents with a positive score, best first, ties broken by the lower document index.

- Postings whose ``docs``/``weights`` are CUDA tensors (:func:`postings_to_device`) are scored by
  the Triton kernel (:mod:`kernels.sparse_scoring_triton`) into a dense score matrix, a bounded
  number of queries at a time, followed by torch top-k
  (:func:`~kernels.sparse_scoring_reference.select_topk`).
- Host (numpy, possibly memory-mapped) postings are scored by the numba term-at-a-time scorer
  (:mod:`kernels.sparse_scoring_numba`), in parallel over queries when ``threads > 1``.

Inputs are trusted here (term ids in range, values finite, non-negative and pre-multiplied by the
de-quantization scale): callers validate and name the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.sparse_scoring_numba import WorkspacePool, score_topk_cpu

GPU_SCORE_BYTES = 1 << 30  # dense [B, num_docs] score matrix (+ int64 keys) per CUDA launch
_COPY_CHUNK = 1 << 26


@dataclass(frozen=True)
class Postings:
    """Term-major postings: ``docs[offsets[t]:offsets[t+1]]`` and ``weights`` (same range) of term t.

    ``offsets`` (int64, ``vocab_size + 1``) always stays a host array; ``docs`` (int32) and
    ``weights`` (uint8 / uint16 / float32) are numpy arrays or, for the CUDA path, torch tensors.
    """

    offsets: np.ndarray
    docs: Any
    weights: Any
    num_docs: int

    @property
    def on_cuda(self) -> bool:
        return bool(getattr(self.docs, "is_cuda", False))


@dataclass(frozen=True)
class QueryBatch:
    """Packed queries: terms/values of query b at ``offsets[b]:offsets[b+1]``; values pre-scaled."""

    offsets: np.ndarray
    terms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class TopK:
    """Per-query results on the host: docs int32 [B, k] (-1 padded), scores float32, counts int32 [B]."""

    docs: np.ndarray
    scores: np.ndarray
    counts: np.ndarray


def _to_tensor(array: np.ndarray, device: str) -> Any:
    import torch

    dtypes = {"int32": torch.int32, "uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}
    out = torch.empty(array.shape, dtype=dtypes[array.dtype.name], device=device)
    for lo in range(0, len(array), _COPY_CHUNK):
        out[lo:lo + _COPY_CHUNK] = torch.from_numpy(np.array(array[lo:lo + _COPY_CHUNK])).to(device)
    return out


def postings_to_device(postings: Postings, device: str) -> Postings:
    """Copy ``docs``/``weights`` to torch tensors on ``device`` (chunked: no second host copy)."""
    return Postings(postings.offsets, _to_tensor(postings.docs, device), _to_tensor(postings.weights, device),
                    postings.num_docs)


def _score_topk_cuda(postings: Postings, batch: QueryBatch, k: int) -> TopK:
    from kernels.sparse_scoring_reference import select_topk
    from kernels.sparse_scoring_triton import score_dense_triton

    rows = max(1, GPU_SCORE_BYTES // (12 * max(postings.num_docs, 1)))
    parts = [(np.full((0, k), -1, np.int32), np.zeros((0, k), np.float32), np.zeros(0, np.int32))]
    for b0 in range(0, len(batch), rows):
        b1 = min(b0 + rows, len(batch))
        lo, hi = int(batch.offsets[b0]), int(batch.offsets[b1])
        scores = score_dense_triton(postings.offsets, postings.docs, postings.weights,
                                    batch.offsets[b0:b1 + 1] - lo, batch.terms[lo:hi], batch.values[lo:hi],
                                    postings.num_docs)
        parts.append(tuple(t.cpu().numpy() for t in select_topk(scores, k)))
    return TopK(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


def score_topk(
    postings: Postings, batch: QueryBatch, k: int, threads: int = 1, pool: WorkspacePool | None = None
) -> TopK:
    """Exact top-k of every query of ``batch``; CUDA postings run the Triton kernel, host ones numba.

    ``threads`` parallelizes the CPU path over queries. ``pool`` holds reusable CPU workspaces: pass
    the same pool for every call on one index so the ``num_docs``-sized accumulators are allocated
    once.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if postings.on_cuda:
        return _score_topk_cuda(postings, batch, k)
    pool = pool or WorkspacePool(postings.num_docs)
    return TopK(*score_topk_cpu(postings.offsets, postings.docs, postings.weights, batch.offsets,
                                batch.terms, batch.values, k, pool, threads))
