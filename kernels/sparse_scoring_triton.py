"""Triton kernel: batched sparse scoring over an inverted index by atomic scatter-add (our own design).

Term-at-a-time evaluation of an inverted index (learned sparse retrieval, Geng et al.), on the GPU.
The host splits every (query, term) pair's postings range into segments of at most ``SEGMENT``
postings, so a long postings list is shared by many programs instead of stalling one; each program
walks its segment in ``BLOCK``-wide vectors, loads doc ids and (quantized) weights, and
``tl.atomic_add``s ``weight * q`` into row ``query`` of a ``[B, num_docs]`` float32 score matrix.
Top-k then runs in torch (:func:`kernels.sparse_scoring_reference.select_topk`).

Float atomics make the summation order, hence the last bits of a score, run-dependent; the ranking
is otherwise that of the reference. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 256
SEGMENT = 4096


@triton.jit
def _scatter_scores_kernel(
    docs_ptr, weights_ptr, item_query_ptr, item_start_ptr, item_stop_ptr, item_value_ptr,
    scores_ptr, num_docs, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    query = tl.load(item_query_ptr + pid).to(tl.int64)
    start = tl.load(item_start_ptr + pid)
    stop = tl.load(item_stop_ptr + pid)
    value = tl.load(item_value_ptr + pid)
    row = scores_ptr + query * num_docs
    for base in range(start, stop, BLOCK):
        offs = base + tl.arange(0, BLOCK)
        mask = offs < stop
        doc = tl.load(docs_ptr + offs, mask=mask, other=0)
        weight = tl.load(weights_ptr + offs, mask=mask, other=0).to(tl.float32)
        tl.atomic_add(row + doc, weight * value, mask=mask)


def work_items(
    offsets: np.ndarray, q_offsets: np.ndarray, q_terms: np.ndarray, q_values: np.ndarray,
    segment: int = SEGMENT,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each (query, term) postings range into segments: (query, start, stop, value) arrays."""
    lengths = np.diff(q_offsets)
    pair_query = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    lo = offsets[q_terms].astype(np.int64)
    hi = offsets[q_terms + 1].astype(np.int64)
    keep = (hi > lo) & (q_values != 0)
    pair_query, lo, hi, values = pair_query[keep], lo[keep], hi[keep], q_values[keep]
    pieces = (hi - lo + segment - 1) // segment
    item_pair = np.repeat(np.arange(len(pieces)), pieces)
    first = np.cumsum(pieces) - pieces
    item_start = lo[item_pair] + (np.arange(len(item_pair)) - first[item_pair]) * segment
    item_stop = np.minimum(item_start + segment, hi[item_pair])
    return pair_query[item_pair], item_start, item_stop, values[item_pair].astype(np.float32)


def score_dense_triton(
    offsets: np.ndarray,
    docs: torch.Tensor,
    weights: torch.Tensor,
    q_offsets: np.ndarray,
    q_terms: np.ndarray,
    q_values: np.ndarray,
    num_docs: int,
    segment: int = SEGMENT,
) -> torch.Tensor:
    """Dense float32 scores ``[B, num_docs]`` of a packed query batch (values pre-scaled).

    ``offsets`` (term -> postings range) stays on the host, where the work items are cut;
    ``docs``/``weights`` live on the device that runs the kernel.
    """
    device = docs.device
    scores = torch.zeros((len(q_offsets) - 1, num_docs), dtype=torch.float32, device=device)
    items = work_items(offsets, q_offsets, q_terms, q_values, segment)
    if len(items[0]) == 0:
        return scores
    query, start, stop, value = (torch.from_numpy(a).to(device) for a in items)
    # triton launches on the current CUDA device: make it the postings' (cuda:1 while cuda:0 is current)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _scatter_scores_kernel[(len(items[0]),)](
            docs, weights, query, start, stop, value, scores, num_docs, BLOCK=BLOCK,
        )
    return scores
