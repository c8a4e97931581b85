"""Sparse scoring kernels: numba CPU path, Triton kernel (interpreter) and torch reference agree."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from kernels.sparse_scoring import Postings, QueryBatch, postings_to_device, score_topk
from kernels.sparse_scoring_numba import SCAN_BLOCK, WorkspacePool
from kernels.sparse_scoring_reference import score_topk_reference, select_topk
from kernels.sparse_scoring_triton import work_items


def random_postings(num_docs: int, vocab: int, density: float, seed: int, dtype=np.uint8) -> Postings:
    """Term-major postings of a random matrix with small integer weights (exact float sums, many ties)."""
    rng = np.random.default_rng(seed)
    mat = sp.random(num_docs, vocab, density=density, format="csc", random_state=rng,
                    data_rvs=lambda n: rng.integers(1, 6, n)).astype(np.float32)
    mat.sort_indices()
    return Postings(mat.indptr.astype(np.int64), mat.indices.astype(np.int32), mat.data.astype(dtype),
                    num_docs)


def random_batch(vocab: int, num_queries: int, max_terms: int, seed: int) -> QueryBatch:
    rng = np.random.default_rng(seed)
    terms = [rng.choice(vocab, size=rng.integers(0, max_terms + 1), replace=False)
             for _ in range(num_queries)]
    offsets = np.zeros(num_queries + 1, dtype=np.int64)
    np.cumsum([len(t) for t in terms], out=offsets[1:])
    flat = np.concatenate(terms).astype(np.int32)
    return QueryBatch(offsets, flat, rng.integers(1, 4, len(flat)).astype(np.float32))


def reference(postings: Postings, batch: QueryBatch, k: int) -> tuple[np.ndarray, ...]:
    out = score_topk_reference(torch.from_numpy(postings.offsets), torch.from_numpy(postings.docs),
                               torch.from_numpy(postings.weights), batch.offsets, batch.terms, batch.values,
                               postings.num_docs, k)
    return tuple(t.numpy() for t in out)


@pytest.mark.parametrize(
    ("num_docs", "vocab", "density", "k"),
    [
        (40, 30, 0.1, 5),  # tiny: k above most match counts
        (300, 200, 0.02, 10),  # sparse queries: tracked mode
        (3000, 50, 0.05, 3),  # long postings: dense mode, bound over SCAN_BLOCK blocks (24 > 4 * 3)
        (3001, 50, 0.05, 7),  # dense mode, bound over FINE_BLOCK blocks (a short last block)
        (3000, 50, 0.05, 200),  # dense mode, fine bound by selection among 375 blocks
        (1000, 50, 0.1, 200),  # dense mode with more wanted than fine blocks: every positive doc listed
    ],
)
def test_numba_path_matches_reference(num_docs: int, vocab: int, density: float, k: int) -> None:
    postings = random_postings(num_docs, vocab, density, seed=num_docs + k)
    batch = random_batch(vocab, num_queries=12, max_terms=8, seed=k)
    got = score_topk(postings, batch, k)
    want_docs, want_scores, want_counts = reference(postings, batch, k)
    np.testing.assert_array_equal(got.counts, want_counts)
    np.testing.assert_array_equal(got.docs, want_docs)  # integer weights: exact sums, so ties are exact too
    np.testing.assert_array_equal(got.scores, want_scores)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_weight_dtypes_and_threads_agree(dtype: type) -> None:
    postings = random_postings(2000, 40, 0.03, seed=3, dtype=dtype)
    batch = random_batch(40, num_queries=30, max_terms=6, seed=4)
    pool = WorkspacePool(postings.num_docs)
    one = score_topk(postings, batch, 15, threads=1, pool=pool)
    many = score_topk(postings, batch, 15, threads=3, pool=pool)
    np.testing.assert_array_equal(one.docs, many.docs)
    np.testing.assert_array_equal(one.scores, many.scores)
    np.testing.assert_array_equal(one.docs, reference(postings, batch, 15)[0])


def test_workspace_is_left_clean_between_queries() -> None:
    postings = random_postings(500, 20, 0.1, seed=5)
    batch = random_batch(20, num_queries=5, max_terms=5, seed=6)
    pool = WorkspacePool(postings.num_docs)
    first = score_topk(postings, batch, 8, pool=pool)
    ws = pool.acquire()
    assert not ws.acc.any() and not ws.mark.any()
    pool.release(ws)
    again = score_topk(postings, batch, 8, pool=pool)
    np.testing.assert_array_equal(first.docs, again.docs)


def test_select_topk_breaks_ties_by_lower_doc_and_skips_non_positive() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
    docs, top, counts = select_topk(scores, 4)
    assert docs.tolist() == [[1, 2, 5, 4], [2, -1, -1, -1]]
    assert top.tolist() == [[3.0, 3.0, 3.0, 2.0], [0.5, 0.0, 0.0, 0.0]]
    assert counts.tolist() == [4, 1]


def test_k_must_be_positive() -> None:
    postings = random_postings(10, 5, 0.5, seed=1)
    with pytest.raises(ValueError, match="k must be"):
        score_topk(postings, random_batch(5, 1, 2, seed=1), 0)


def test_work_items_cover_each_postings_range_in_segments() -> None:
    offsets = np.array([0, 0, 10, 13, 40], dtype=np.int64)  # term 0 empty, term 3 has 27 postings
    q_offsets = np.array([0, 3, 4], dtype=np.int64)
    q_terms = np.array([0, 3, 1, 3], dtype=np.int32)
    q_values = np.array([1.0, 2.0, 0.0, 4.0], dtype=np.float32)  # zero-weight term: no work
    query, start, stop, value = work_items(offsets, q_offsets, q_terms, q_values, segment=8)
    assert query.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert start.tolist() == [13, 21, 29, 37] * 2
    assert stop.tolist() == [21, 29, 37, 40] * 2
    assert value.tolist() == [2.0] * 4 + [4.0] * 4


TRITON_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, scipy.sparse as sp, torch
    import triton.language  # imported under TRITON_INTERPRET=1
    from kernels.sparse_scoring_reference import score_dense_reference, select_topk
    from kernels.sparse_scoring_triton import score_dense_triton

    out = {}
    for seed, dtype in enumerate([np.uint8, np.uint16, np.float32]):
        rng = np.random.default_rng(seed)
        mat = sp.random(60, 12, density=0.3, format="csc", random_state=rng,
                        data_rvs=lambda n: rng.integers(1, 9, n)).astype(np.float32)
        offsets, docs = mat.indptr.astype(np.int64), torch.from_numpy(mat.indices.astype(np.int32))
        weights = torch.from_numpy(mat.data.astype(dtype))
        q_offsets = np.array([0, 3, 3, 7], dtype=np.int64)  # the middle query is empty
        q_terms = np.array([0, 5, 11, 1, 2, 3, 4], dtype=np.int32)
        q_values = rng.integers(1, 4, 7).astype(np.float32)
        got = score_dense_triton(offsets, docs, weights, q_offsets, q_terms, q_values, 60, segment=5)
        want = score_dense_reference(torch.from_numpy(offsets), docs, weights, q_offsets, q_terms,
                                     q_values, 60)
        out[np.dtype(dtype).name] = {
            "device": str(got.device),
            "max_abs_diff": float((got - want).abs().max()),
            "topk_equal": bool(torch.equal(select_topk(got, 10)[0], select_topk(want, 10)[0])),
            "nonzero": int((want > 0).sum()),
        }
    print(json.dumps(out))
    """
)


def test_triton_kernel_matches_reference_in_interpreter(run_interpreted) -> None:
    result = run_interpreted(TRITON_SCRIPT)
    assert set(result) == {"uint8", "uint16", "float32"}
    for name, r in result.items():
        assert r["device"] == "cpu", name
        assert r["nonzero"] > 20, name
        assert r["max_abs_diff"] == 0.0, (name, r)
        assert r["topk_equal"], (name, r)


@pytest.mark.gpu
def test_cuda_dispatch_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    postings = random_postings(5 * SCAN_BLOCK * 10, 60, 0.05, seed=9)
    batch = random_batch(60, num_queries=20, max_terms=8, seed=10)
    cpu = score_topk(postings, batch, 25)
    gpu = score_topk(postings_to_device(postings, "cuda"), batch, 25)
    np.testing.assert_array_equal(gpu.counts, cpu.counts)
    np.testing.assert_array_equal(gpu.docs, cpu.docs)  # integer weights: atomics sum exactly
    np.testing.assert_allclose(gpu.scores, cpu.scores)
