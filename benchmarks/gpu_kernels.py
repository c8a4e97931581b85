"""Benchmark: the Triton kernels on real CUDA against their baselines, in the same run.

Two hot paths, each checked for exactness before it is timed:

1. **Hashed / QR embedding lookups** (:mod:`kernels.embedding_bag`; hashing trick, Weinberger et al. 2009;
   quotient-remainder, Shi et al. KDD 2020). A synthetic 20M-feature vocabulary, dim 16: the hash table
   holds 1% of the full table's rows, the two QR partitions 0.5%. Ids ``[batch, fields]`` are Zipf(1.2)
   ranks clipped at the vocabulary (the last id takes ~3% of draws) and scattered by a fixed hash. The
   fused Triton forward is timed against the torch reference of the same lookup on the GPU and against
   ``F.embedding`` / ``F.embedding_bag`` over the *full* 20M-row table on the GPU (the uncompressed
   baseline), unpooled and sum-pooled, forward and forward + backward; the training step also against
   the same lookup written as plain indexing, whose accumulating backward
   :func:`kernels.row_lookup.lookup_rows` avoids on CUDA.
2. **Sparse top-k scoring** (:mod:`kernels.sparse_scoring`; term-at-a-time over an inverted index). A
   synthetic learned-sparse-like corpus (Zipf terms, uint8 impacts) scored by the Triton kernel + torch
   top-k, against cuSPARSE (``torch.sparse.mm`` of the doc-term CSR by the dense query block, same top-k)
   on the GPU and the numba CPU path on every core. Results must agree exactly (integer weights).

Times are CUDA-event medians after warm-up; the training-step ratios are taken against the Triton path.
Without CUDA the script says so and exits with status 1: nothing here has
a CPU meaning (the CPU paths are benchmarked in ``embedding_compression.py`` and ``sparse_engine.py``).
Prints one JSON object and writes ``benchmarks/results/gpu_kernels.json`` (../shared/docs/DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from kernels.embedding_bag import embedding_bag
from kernels.embedding_bag_reference import (
    CompositionalLookup,
    HashLookup,
    mixed_radix_rows,
    universal_hash,
)
from kernels.sparse_scoring import Postings, QueryBatch, postings_to_device, score_topk
from kernels.sparse_scoring_numba import WorkspacePool
from kernels.sparse_scoring_reference import select_topk

DEVICE = "cuda"  # every tensor of the run lives here


def cuda_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event-timed calls, after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def zipf_ids(n: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Ids with power-law frequencies over ``[0, n)`` (rank r drawn ~ 1/r), scattered by a fixed hash."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.2, size=shape), n) - 1
    return torch.from_numpy((ranks * 2_654_435_761) % n)


def _lookup_case(
    weight: torch.Tensor, ids: torch.Tensor, lookup: Any, pool: bool, full: torch.Tensor, repeats: int
) -> dict[str, Any]:
    fused = embedding_bag(weight, ids, lookup, pool, use_triton=True)
    ref = embedding_bag(weight, ids, lookup, pool, use_triton=False)
    lookups = ids.numel()

    def baseline() -> torch.Tensor:
        return F.embedding_bag(ids, full, mode="sum") if pool else F.embedding(ids, full)

    def indexed() -> torch.Tensor:  # the reference with plain indexing (accumulating index_put backward)
        rows = (
            [universal_hash(ids.long(), lookup.a, lookup.b, weight.shape[0])]
            if isinstance(lookup, HashLookup)
            else mixed_radix_rows(ids, lookup)
        )
        out = weight[rows[0]]
        for row in rows[1:]:
            out = out * weight[row]
        return out.sum(dim=1) if pool else out

    def step(use_triton: bool | None, base: bool, index: bool = False) -> Callable[[], None]:
        def run() -> None:
            w = full if base else weight
            w.grad = None
            if index:
                out = indexed()
            else:
                out = baseline() if base else embedding_bag(w, ids, lookup, pool, use_triton=use_triton)
            out.sum().backward()

        return run

    with torch.no_grad():
        ms = {
            "triton": cuda_ms(lambda: embedding_bag(weight, ids, lookup, pool, use_triton=True), repeats),
            "torch_reference": cuda_ms(
                lambda: embedding_bag(weight, ids, lookup, pool, use_triton=False), repeats
            ),
            "full_table": cuda_ms(baseline, repeats),
        }
    weight.requires_grad_(True)
    full.requires_grad_(True)
    train = {
        "triton": cuda_ms(step(True, False), repeats),
        "torch_reference": cuda_ms(step(False, False), repeats),
        "full_table": cuda_ms(step(None, True), repeats),
        "torch_indexing": cuda_ms(step(None, False, index=True), repeats),
    }
    weight.requires_grad_(False)
    full.requires_grad_(False)
    return {
        "pool": pool,
        "max_abs_diff_vs_reference": float((fused - ref).abs().max()),
        "forward_ms": {k: round(v, 4) for k, v in ms.items()},
        "forward_lookups_per_s": {k: round(lookups / v * 1e3) for k, v in ms.items()},
        "forward_speedup_vs_reference": round(ms["torch_reference"] / ms["triton"], 3),
        "forward_vs_full_table": round(ms["full_table"] / ms["triton"], 3),
        "train_step_ms": {k: round(v, 4) for k, v in train.items()},
        "train_vs_full_table": round(train["full_table"] / train["triton"], 3),
        "train_speedup_vs_indexing": round(train["torch_indexing"] / train["triton"], 3),
    }


def lookups(features: int, budget: float, dim: int, batch: int, fields: int, repeats: int) -> dict[str, Any]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    full = torch.randn(features, dim, device=DEVICE, generator=gen)
    ids = zipf_ids(features, (batch, fields), seed=1).to(DEVICE)
    rows = int(features * budget)
    hashed = torch.randn(rows, dim, device=DEVICE, generator=gen)
    remainder = rows // 2  # two partitions: rows/2 + ceil(features / (rows/2)) rows, half the budget
    quotient = -(-features // remainder)
    qr = torch.randn(remainder + quotient, dim, device=DEVICE, generator=gen)
    cases = {
        "hash": (hashed, HashLookup(a=1_103_515_245, b=12_345)),
        "qr": (qr, CompositionalLookup((remainder, quotient), "mult")),
    }
    out: dict[str, Any] = {
        "features": features,
        "budget": budget,
        "dim": dim,
        "batch": batch,
        "fields": fields,
    }
    for name, (weight, lookup) in cases.items():
        out[name] = {
            "rows": int(weight.shape[0]),
            "unpooled": _lookup_case(weight, ids, lookup, False, full, repeats),
            "pooled": _lookup_case(weight, ids, lookup, True, full, repeats),
        }
    del full
    torch.cuda.empty_cache()
    return out


def sparse_corpus(
    num_docs: int, nnz: int, vocab: int, num_queries: int, seed: int
) -> tuple[sp.csr_matrix, QueryBatch]:
    """Doc-term matrix with Zipf terms and uint8-range integer impacts; queries of 5-30 terms, values 1-3."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab) + 20.0)
    p /= p.sum()
    perm = rng.permutation(vocab).astype(np.int32)
    blocks = []
    for start in range(0, num_docs, 200_000):
        rows = min(200_000, num_docs - start)
        cols = perm[rng.choice(vocab, size=(rows, nnz), p=p)]
        vals = rng.integers(1, 20, size=(rows, nnz)).astype(np.float32)
        block = sp.csr_matrix(
            (vals.ravel(), cols.ravel(), np.arange(0, rows * nnz + 1, nnz)), shape=(rows, vocab)
        )
        block.sum_duplicates()
        block.data = np.minimum(block.data, 255)
        blocks.append(block)
    matrix = sp.vstack(blocks, format="csr")
    terms = [np.unique(perm[rng.choice(vocab, size=rng.integers(5, 31), p=p)]) for _ in range(num_queries)]
    offsets = np.zeros(num_queries + 1, np.int64)
    np.cumsum([len(t) for t in terms], out=offsets[1:])
    flat = np.concatenate(terms).astype(np.int32)
    return matrix, QueryBatch(offsets, flat, rng.integers(1, 4, len(flat)).astype(np.float32))


def _cusparse_topk(
    doc_term: torch.Tensor, batch: QueryBatch, vocab: int, k: int, rows: int
) -> list[torch.Tensor]:
    """Top-k docs by cuSPARSE: the doc-term CSR times a dense ``[vocab, rows]`` block of queries."""
    owner = np.repeat(np.arange(len(batch)), np.diff(batch.offsets))
    parts = []
    for b0 in range(0, len(batch), rows):
        b1 = min(b0 + rows, len(batch))
        lo, hi = int(batch.offsets[b0]), int(batch.offsets[b1])
        q = torch.zeros((vocab, b1 - b0), device=DEVICE)
        q[
            torch.from_numpy(batch.terms[lo:hi]).to(DEVICE).long(),
            torch.from_numpy(owner[lo:hi] - b0).to(DEVICE),
        ] = torch.from_numpy(batch.values[lo:hi]).to(DEVICE)
        parts.append(select_topk(torch.sparse.mm(doc_term, q).T.contiguous(), k)[0])
    return parts


def sparse_scoring(
    num_docs: int, nnz: int, vocab: int, num_queries: int, k: int, repeats: int
) -> dict[str, Any]:
    t = time.perf_counter()
    matrix, batch = sparse_corpus(num_docs, nnz, vocab, num_queries, seed=0)
    csc = matrix.tocsc()
    csc.sort_indices()
    host = Postings(
        csc.indptr.astype(np.int64), csc.indices.astype(np.int32), csc.data.astype(np.uint8), num_docs
    )
    gen_s = time.perf_counter() - t
    device = postings_to_device(host, DEVICE)
    threads = os.cpu_count() or 1
    pool = WorkspacePool(num_docs)
    cpu = score_topk(host, batch, k, threads=threads, pool=pool)
    gpu = score_topk(device, batch, k)
    doc_term = torch.sparse_csr_tensor(
        torch.from_numpy(matrix.indptr).long(),
        torch.from_numpy(matrix.indices).long(),
        torch.from_numpy(matrix.data),
        size=matrix.shape,
    ).to(DEVICE)
    rows = max(1, (1 << 30) // (12 * num_docs))
    cus = torch.cat(_cusparse_topk(doc_term, batch, vocab, k, rows)).cpu().numpy()

    def cpu_run() -> None:
        score_topk(host, batch, k, threads=threads, pool=pool)

    cpu_s = statistics.median(_wall(cpu_run) for _ in range(max(3, repeats // 3)))
    ms = {
        "triton": cuda_ms(lambda: score_topk(device, batch, k), repeats),
        "cusparse": cuda_ms(lambda: _cusparse_topk(doc_term, batch, vocab, k, rows), max(3, repeats // 3)),
        "cpu_numba": 1000 * cpu_s,
    }
    return {
        "docs": num_docs,
        "postings": int(matrix.nnz),
        "vocab": vocab,
        "queries": num_queries,
        "k": k,
        "generate_s": round(gen_s, 1),
        "cpu_threads": threads,
        "topk_equal_gpu_cpu": bool(
            np.array_equal(gpu.docs, cpu.docs) and np.array_equal(gpu.scores, cpu.scores)
        ),
        "topk_equal_cusparse_cpu": bool(np.array_equal(cus, cpu.docs)),
        "batch_ms": {k_: round(v, 3) for k_, v in ms.items()},
        "qps": {k_: round(num_queries / v * 1e3, 1) for k_, v in ms.items()},
        "speedup_vs_cusparse": round(ms["cusparse"] / ms["triton"], 3),
        "speedup_vs_cpu": round(ms["cpu_numba"] / ms["triton"], 3),
    }


def _wall(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def acceptance(m: dict[str, Any]) -> list[dict[str, Any]]:
    acc = []
    for name in ("hash", "qr"):
        for pooling in ("unpooled", "pooled"):
            acc.append(
                entry(
                    f"Triton {name} lookup ({pooling}) == torch reference on CUDA: max |diff|",
                    m["lookups"][name][pooling]["max_abs_diff_vs_reference"],
                    "<=",
                    1e-5,
                )
            )
    s = m["sparse_scoring"]
    acc.append(
        entry(
            "Triton sparse top-k == numba CPU top-k (docs and scores)", int(s["topk_equal_gpu_cpu"]), "==", 1
        )
    )
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=20_000_000)
    p.add_argument("--budget", type=float, default=0.01)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=16_384)
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--nnz", type=int, default=64)
    p.add_argument("--vocab", type=int, default=30_522)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_kernels.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels.py needs CUDA: no GPU is visible to torch here")
    run = BenchmarkRun("gpu_kernels")
    metrics = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "lookups": lookups(args.features, args.budget, args.dim, args.batch, args.fields, args.repeats),
        "sparse_scoring": sparse_scoring(args.docs, args.nnz, args.vocab, args.queries, args.k, args.repeats),
    }
    import triton

    metrics["triton"] = triton.__version__
    run.report(metrics, acceptance(metrics), args.out)


if __name__ == "__main__":
    main()
