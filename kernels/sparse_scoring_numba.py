"""CPU sparse scoring: term-at-a-time accumulation over an inverted index, then exact top-k (numba).

Implements the classic term-at-a-time (TAAT) evaluation of an inverted index (Turtle & Flood, 1995;
Zobel & Moffat, "Inverted files for text search engines", 2006) for learned sparse retrieval
(Geng et al., inference-free learned sparse retrievers): ``score(q, d) = sum_t q_t * w_d(t)``,
reading only the postings of the query's terms.

Per query, the postings of each term are added into a dense float32 accumulator of ``num_docs``.
Exact top-k selection never sorts ``num_docs`` scores; it keeps the k best in a bounded min-heap of
int64 keys, in one of two modes chosen by the query's postings count:

- *tracked* (few postings): each newly touched document is listed, only those are offered to the
  heap, and only their accumulator entries are reset afterwards;
- *dense* (postings >= ``num_docs / DENSE_RATIO``): no tracking (it would cost more than it saves);
  a SIMD pass takes the maximum of every block of documents (``SCAN_BLOCK``, or ``FINE_BLOCK`` in a
  corpus with fewer than 4k such blocks), the k-th largest block maximum bounds the k-th best score
  from below, the documents reaching it (in the blocks reaching it) are listed, and the k best of
  that short list are selected (quickselect) and sorted; the accumulator is cleared with one
  sequential pass.

A :class:`Workspace` is thus reused query after query. All functions are compiled with
``nogil=True``: a batch runs as contiguous query ranges on a thread pool, one workspace per thread
(:class:`WorkspacePool`).

Ranking is exact: documents with a positive score, best first, ties broken by the lower internal
document index. Query values must already be multiplied by the postings' de-quantization scale.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

# A query whose postings number at least num_docs / DENSE_RATIO is scored without touched-doc tracking.
DENSE_RATIO = 4
# Heap sentinel: above the key of any doc with score <= 0, below that of any positive score.
NO_MATCH = 0x7FFFFFFF
# Docs per block of the dense scan (a block is skipped when its best score cannot enter the top-k).
SCAN_BLOCK = 128
# Docs per block when bounding the k-th best score of a corpus too small for SCAN_BLOCK blocks.
FINE_BLOCK = 8


class Workspace:
    """Per-thread scratch for one index: score accumulator, touched flags and touched list."""

    def __init__(self, num_docs: int) -> None:
        self.acc = np.zeros(num_docs, dtype=np.float32)
        self.mark = np.zeros(num_docs, dtype=np.uint8)
        self.touched = np.empty(num_docs, dtype=np.int32)


class WorkspacePool:
    """Thread-safe free list of :class:`Workspace` objects (grows to the peak concurrency)."""

    def __init__(self, num_docs: int) -> None:
        self.num_docs = num_docs
        self._free: queue.SimpleQueue[Workspace] = queue.SimpleQueue()

    def acquire(self) -> Workspace:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return Workspace(self.num_docs)

    def release(self, workspace: Workspace) -> None:
        self._free.put(workspace)


@numba.njit(nogil=True, cache=True)
def _postings_count(offsets, terms, values):  # pragma: no cover - numba
    total = 0
    for j in range(terms.shape[0]):
        if values[j] != 0:
            total += offsets[terms[j] + 1] - offsets[terms[j]]
    return total


@numba.njit(nogil=True, cache=True)
def _accumulate_tracked(offsets, docs, weights, terms, values, acc, mark, touched):  # pragma: no cover
    """Add the query's postings into ``acc``, listing each touched doc once; return how many."""
    n = 0
    for j in range(terms.shape[0]):
        q = values[j]
        if q == 0:
            continue
        t = terms[j]
        for p in range(offsets[t], offsets[t + 1]):
            d = docs[p]
            if mark[d] == 0:
                mark[d] = 1
                touched[n] = d
                n += 1
            acc[d] += q * np.float32(weights[p])
    return n


@numba.njit(nogil=True, cache=True)
def _accumulate_dense(offsets, docs, weights, terms, values, acc):  # pragma: no cover - numba
    """Add the query's postings into ``acc`` without tracking (the caller then scans all docs)."""
    for j in range(terms.shape[0]):
        q = values[j]
        if q == 0:
            continue
        t = terms[j]
        for p in range(offsets[t], offsets[t + 1]):
            acc[docs[p]] += q * np.float32(weights[p])


@numba.njit(nogil=True, cache=True)
def _sift_down(heap, i, m):  # pragma: no cover - numba
    """Restore the min-heap property below position ``i`` of ``heap[:m]``.

    The smaller child is picked arithmetically, not by a branch (random keys mispredict half the
    time); ``heap`` must have room past ``2 * m`` so that reading a missing right child is safe.
    """
    key = heap[i]
    c = 2 * i + 1
    while c < m:
        c += np.int64(c + 1 < m) & np.int64(heap[c + 1] < heap[c])
        if heap[c] >= key:
            break
        heap[i] = heap[c]
        i = c
        c = 2 * i + 1
    heap[i] = key


@numba.njit(nogil=True, cache=True)
def _sort_heap(heap, size):  # pragma: no cover - numba
    """Heapsort ``heap[:size]`` in place, best key first; return how many keys are real matches."""
    for end in range(size - 1, 0, -1):
        key = heap[end]
        heap[end] = heap[0]
        heap[0] = key
        _sift_down(heap, 0, end)
    m = 0
    while m < size and heap[m] > NO_MATCH:
        m += 1
    return m


@numba.njit(nogil=True, cache=True)
def _emit(acc, heap, m, out_scores, out_docs):  # pragma: no cover - numba
    for j in range(m):
        d = 0x7FFFFFFF - np.int32(heap[j] & 0xFFFFFFFF)
        out_docs[j] = d
        out_scores[j] = acc[d]


@numba.njit(nogil=True, cache=True)
def _scan_tracked(bits, touched, n, heap, size):  # pragma: no cover - numba
    """Offer the ``n`` touched docs to the k-heap."""
    root = heap[0]
    for i in range(n):
        d = touched[i]
        key = (np.int64(bits[d]) << 32) | np.int64(0x7FFFFFFF - d)
        if key > root:
            heap[0] = key
            _sift_down(heap, 0, size)
            root = heap[0]


@numba.njit(nogil=True, cache=True)
def _offer_blocks(bits, block_max, heap, size):  # pragma: no cover - numba
    """Fill ``block_max`` with each block's best score bits and return a floor for the k-th best.

    At least ``size`` blocks have a maximum >= the ``size``-th largest block maximum, so at least
    ``size`` docs score that high: it is a lower bound of the k-th best score (1 when fewer than
    ``size`` blocks hold a positive score, i.e. every positive doc qualifies).
    """
    num_docs = bits.shape[0]
    root = heap[0]
    for j in range(block_max.shape[0]):
        lo = j * SCAN_BLOCK
        best = np.int32(0)
        if lo + SCAN_BLOCK <= num_docs:
            for d in range(SCAN_BLOCK):  # constant trip count: unrolled into SIMD max
                best = max(best, bits[lo + d])
        else:
            for d in range(lo, num_docs):
                best = max(best, bits[d])
        block_max[j] = best
        key = (np.int64(best) << 32) | np.int64(0x7FFFFFFF - j)
        if key > root:
            heap[0] = key
            _sift_down(heap, 0, size)
            root = heap[0]
    return max(np.int32(heap[0] >> 32), np.int32(1))


@numba.njit(nogil=True, cache=True)
def _fine_block_max(bits, block_max):  # pragma: no cover - numba
    """Each ``FINE_BLOCK``-doc block's best score bits into ``block_max``; returns the block count."""
    num_docs = bits.shape[0]
    full = num_docs // FINE_BLOCK
    for j in range(full):
        lo = j * FINE_BLOCK
        best = np.int32(0)
        for d in range(FINE_BLOCK):  # constant trip count: unrolled
            best = max(best, bits[lo + d])
        block_max[j] = best
    if full * FINE_BLOCK < num_docs:
        best = np.int32(0)
        for d in range(full * FINE_BLOCK, num_docs):
            best = max(best, bits[d])
        block_max[full] = best
        return full + 1
    return full


@numba.njit(nogil=True, cache=True)
def _dense_floor(bits, block_max, heap, size):  # pragma: no cover - numba
    """``(floor, block)``: a lower bound of the k-th best score bits, and the block size it came from.

    At least ``size`` blocks have a maximum >= the ``size``-th largest block maximum, so at least
    ``size`` docs reach it. Large corpora bound it over ``SCAN_BLOCK``-doc blocks with a k-heap;
    small ones (fewer than ``4 * size`` such blocks) over ``FINE_BLOCK``-doc blocks by selection.
    """
    num_docs = bits.shape[0]
    coarse = (num_docs + SCAN_BLOCK - 1) // SCAN_BLOCK
    if coarse > 4 * size:
        heap[:size] = NO_MATCH
        return _offer_blocks(bits, block_max[:coarse], heap, size), SCAN_BLOCK
    fine = _fine_block_max(bits, block_max)
    if fine <= size:
        return np.int32(1), FINE_BLOCK
    kth = np.partition(block_max[:fine], fine - size)[fine - size]
    return max(kth, np.int32(1)), FINE_BLOCK


@numba.njit(nogil=True, cache=True)
def _gather(bits, block_max, block, floor, cand):  # pragma: no cover - numba
    """List in ``cand`` every doc scoring >= ``floor`` (walking only blocks whose maximum reaches it)."""
    num_docs = bits.shape[0]
    blocks = (num_docs + block - 1) // block
    c = 0
    for j in range(blocks):
        if block_max[j] >= floor:
            for d in range(j * block, min((j + 1) * block, num_docs)):
                if bits[d] >= floor:
                    cand[c] = d
                    c += 1
    return c


@numba.njit(nogil=True, cache=True)
def _select(acc, bits, cand, c, k, out_scores, out_docs):  # pragma: no cover - numba
    """The best ``k`` of the ``c`` candidates, best first (score desc, doc asc); returns how many."""
    keys = np.empty(c, dtype=np.int64)
    for i in range(c):
        d = cand[i]
        keys[i] = (np.int64(bits[d]) << 32) | np.int64(0x7FFFFFFF - d)
    if c > k:
        keys = np.partition(keys, c - k)[c - k:]
    keys = np.sort(keys)
    m = keys.shape[0]
    for j in range(m):
        d = 0x7FFFFFFF - np.int32(keys[m - 1 - j] & 0xFFFFFFFF)
        out_docs[j] = d
        out_scores[j] = acc[d]
    return m


@numba.njit(nogil=True, cache=True)
def _score_query(offsets, docs, weights, terms, values, k, acc, mark, touched, heap, block_max,
                out_scores, out_docs):  # pragma: no cover - numba
    """Exact top-k of one query into ``out_scores``/``out_docs``; returns the count; resets the workspace.

    Few postings relative to ``num_docs``: track touched docs and select among them. Many: add
    untracked, list the docs reaching a block-wise bound of the k-th best (:func:`_dense_floor`,
    :func:`_gather`), select among them (:func:`_select`), clear ``acc`` in one pass.
    Selection keeps the k best int64 keys ``(float32 bits of score) << 32 | (2^31 - 1 - doc)`` in a
    min-heap: for positive scores the key orders like (score desc, doc asc) (the bits of a positive
    float32 are monotone in its value), and a heap pre-filled with the :data:`NO_MATCH` sentinel
    rejects scores <= 0 with the same single compare against the root.
    """
    num_docs = acc.shape[0]
    bits = acc.view(np.int32)
    if _postings_count(offsets, terms, values) * DENSE_RATIO >= num_docs:
        _accumulate_dense(offsets, docs, weights, terms, values, acc)
        size = min(k, num_docs)
        floor, block = _dense_floor(bits, block_max, heap, size)
        m = _select(acc, bits, touched, _gather(bits, block_max, block, floor, touched), size,
                    out_scores, out_docs)
        acc[:] = 0.0
        return m
    n = _accumulate_tracked(offsets, docs, weights, terms, values, acc, mark, touched)
    size = min(k, n)
    heap[:size] = NO_MATCH
    _scan_tracked(bits, touched, n, heap, size)
    m = _sort_heap(heap, size)
    _emit(acc, heap, m, out_scores, out_docs)
    for i in range(n):
        acc[touched[i]] = 0.0
        mark[touched[i]] = 0
    return m


@numba.njit(nogil=True, cache=True)
def _score_range(offsets, docs, weights, q_offsets, q_terms, q_values, start, stop, k,
                acc, mark, touched, out_docs, out_scores, out_counts):  # pragma: no cover - numba
    """Score queries ``start..stop-1`` of a packed batch into rows of ``out_docs``/``out_scores``."""
    heap = np.empty(2 * k + 2, dtype=np.int64)
    block_max = np.empty((acc.shape[0] + FINE_BLOCK - 1) // FINE_BLOCK, dtype=np.int32)
    for b in range(start, stop):
        lo = q_offsets[b]
        hi = q_offsets[b + 1]
        out_counts[b] = _score_query(offsets, docs, weights, q_terms[lo:hi], q_values[lo:hi], k,
                                    acc, mark, touched, heap, block_max, out_scores[b], out_docs[b])


def _chunks(num_queries: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous query ranges, several per thread so uneven queries balance out."""
    parts = min(num_queries, threads * 4)
    bounds = np.linspace(0, num_queries, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def score_topk_cpu(
    offsets: np.ndarray,
    docs: np.ndarray,
    weights: np.ndarray,
    q_offsets: np.ndarray,
    q_terms: np.ndarray,
    q_values: np.ndarray,
    k: int,
    pool: WorkspacePool,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k of a packed query batch: (docs int32 [B, k], scores float32 [B, k], counts int32 [B]).

    Rows are padded with doc -1 / score 0 past ``counts[b]``. With ``threads > 1`` query ranges run
    on a thread pool (the compiled scorer releases the GIL); the caller's thread just waits, so the
    workers never queue for the GIL behind Python work.
    """
    num_queries = len(q_offsets) - 1
    out_docs = np.full((num_queries, k), -1, dtype=np.int32)
    out_scores = np.zeros((num_queries, k), dtype=np.float32)
    out_counts = np.zeros(num_queries, dtype=np.int32)

    def run(span: tuple[int, int]) -> None:
        ws = pool.acquire()
        try:
            _score_range(offsets, docs, weights, q_offsets, q_terms, q_values, span[0], span[1], k,
                        ws.acc, ws.mark, ws.touched, out_docs, out_scores, out_counts)
        finally:
            pool.release(ws)

    if threads <= 1 or num_queries <= 1:
        run((0, num_queries))
    else:
        list(_executor(threads).map(run, _chunks(num_queries, threads)))
    return out_docs, out_scores, out_counts


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` workers, started once (thread start-up costs per batch)."""
    with _EXECUTORS_LOCK:
        if threads not in _EXECUTORS:
            _EXECUTORS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sparse-scoring")
        return _EXECUTORS[threads]
