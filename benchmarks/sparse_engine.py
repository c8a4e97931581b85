"""Benchmark: the native sparse engine (retrieval.index.inverted) against bm25s on the same postings.

Both engines score the *same* term-major matrix, so only the engine differs: on SciFact the matrix
is bm25s's own BM25 index (bm25s tokenizer, Lucene BM25), on the synthetic corpus it is a random
learned-sparse-like matrix (Zipf term frequencies, ~``--nnz`` terms per document) handed to bm25s's
numba backend as its precomputed score matrix. Queries carry weight 1 per token (bm25s cannot weight
query terms). Measured: single-query latency at k (one thread, one call per query) and batch
throughput (``--threads``), for our engine with float32 (``none``, exact vs bm25s) and ``uint8``
postings, plus top-k agreement with bm25s. Prints one JSON object and writes
``benchmarks/results/sparse_engine.json`` (../shared/docs/DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from retrieval.index.inverted import InvertedIndex, build_inverted_index

Query = list[int]


# ---------------------------------------------------------------- corpora


def scifact(data: Path) -> tuple[sp.csr_matrix, list[Query], Any]:
    """bm25s's BM25 matrix of SciFact and the test queries as bm25s token ids, plus the retriever."""
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open())}
    test_ids = {line.split("\t")[0] for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    texts = [f"{d.get('title', '')} {d['text']}" for d in corpus]
    retriever = bm25s.BM25(k1=0.9, b=0.4, backend="numba")
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([queries[q] for q in sorted(test_ids) if q in queries], stopwords="en",
                            return_ids=False, show_progress=False)
    vocab = retriever.vocab_dict
    qids = [[vocab[t] for t in q if t in vocab] for q in tokens]
    qids = [q for q in qids if q]
    scores = retriever.scores
    csc = sp.csc_matrix((scores["data"], scores["indices"], scores["indptr"]),
                        shape=(scores["num_docs"], len(scores["indptr"]) - 1))
    return csc.tocsr(), qids, retriever


def synthetic(num_docs: int, nnz: int, vocab: int, num_queries: int,
              seed: int) -> tuple[sp.csr_matrix, list[Query]]:
    """Random non-negative doc-term matrix with Zipf-distributed terms; queries of 5-30 distinct terms."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab) + 20.0)
    p /= p.sum()
    perm = rng.permutation(vocab)
    blocks = []
    for start in range(0, num_docs, 100_000):
        rows = min(100_000, num_docs - start)
        cols = perm[rng.choice(vocab, size=(rows, nnz), p=p)].astype(np.int32)
        vals = rng.gamma(2.0, 0.5, size=(rows, nnz)).astype(np.float32)
        block = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, rows * nnz + 1, nnz)),
                              shape=(rows, vocab))
        block.sum_duplicates()
        blocks.append(block)
    matrix = sp.vstack(blocks, format="csr")
    queries = [sorted(set(perm[rng.choice(vocab, size=rng.integers(5, 31), p=p)].tolist()))
               for _ in range(num_queries)]
    return matrix, queries


def bm25s_over(index: InvertedIndex) -> Any:
    """A bm25s numba retriever whose precomputed score matrix is ``index``'s float32 postings."""
    retriever = bm25s.BM25(backend="numba")
    post = index.postings
    retriever.scores = {"data": np.asarray(post.weights), "indices": np.asarray(post.docs),
                        "indptr": np.asarray(post.offsets), "num_docs": index.num_docs}
    retriever.vocab_dict = {str(t): t for t in range(index.vocab_size)}
    retriever.unique_token_ids_set = set(range(index.vocab_size))
    retriever.nonoccurrence_array = None
    return retriever


# ---------------------------------------------------------------- timing


def _latencies(fns: dict[str, Callable[[Query], Any]], queries: list[Query]) -> dict[str, dict[str, float]]:
    """Single-query latency of each engine, interleaved query by query so machine noise hits all alike."""
    for fn in fns.values():
        for q in queries[:5]:
            fn(q)  # warm-up (numba compilation, page cache)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for q in queries:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(q)
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ms in times.items():
        ms.sort()
        out[name] = {"median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms),
                     "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}
    return out


def _qps(fns: dict[str, Callable[[list[Query]], Any]], queries: list[Query],
         repeats: int = 5) -> dict[str, float]:
    """Batch throughput of each engine: best of ``repeats`` interleaved rounds."""
    for fn in fns.values():
        fn(queries[:8])
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(queries)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(queries) / seconds for name, seconds in best.items()}


def _ours(index: InvertedIndex, k: int) -> tuple[Callable, Callable]:
    """Our public list API: ``(doc id, score)`` tuples per query."""
    def single(q: Query) -> Any:
        return index.search_sparse(q, np.ones(len(q), np.float32), k)

    def batch_fn(threads: int) -> Callable:
        return lambda qs: index.search_sparse_batch([(q, np.ones(len(q), np.float32)) for q in qs], k,
                                                    threads)

    return single, batch_fn


def _ours_arrays(index: InvertedIndex, k: int) -> tuple[Callable, Callable]:
    """Our array API (packed queries in, doc index/score arrays out), the same output as bm25s's."""
    def pack(qs: list[Query]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        offsets = np.zeros(len(qs) + 1, dtype=np.int64)
        np.cumsum([len(q) for q in qs], out=offsets[1:])
        terms = np.fromiter(itertools.chain.from_iterable(qs), dtype=np.int64, count=int(offsets[-1]))
        return offsets, terms, np.ones(len(terms), np.float32)

    def single(q: Query) -> Any:
        return index.search_topk(*pack([q]), k)

    def batch_fn(threads: int) -> Callable:
        return lambda qs: index.search_topk(*pack(qs), k, threads)

    return single, batch_fn


def _theirs(retriever: Any, k: int) -> tuple[Callable, Callable]:
    def single(q: Query) -> Any:
        return retriever.retrieve([q], k=k, show_progress=False, n_threads=0)

    def batch_fn(threads: int) -> Callable:
        return lambda qs: retriever.retrieve(qs, k=k, show_progress=False, n_threads=threads)

    return single, batch_fn


def _agreement(index: InvertedIndex, retriever: Any, queries: list[Query], k: int) -> float:
    ours = index.search_sparse_batch([(q, np.ones(len(q), np.float32)) for q in queries], k)
    docs, _ = retriever.retrieve(queries, k=k, show_progress=False, n_threads=0)
    ids = np.asarray(index.doc_ids)
    overlaps = [len({d for d, _ in mine} & set(ids[row].tolist())) / max(1, min(k, len(mine)))
                for mine, row in zip(ours, docs, strict=True)]
    return float(np.mean(overlaps))


def compare(name: str, matrix: sp.csr_matrix, queries: list[Query], k: int, threads: int,
            workdir: Path, retriever: Any = None) -> dict[str, Any]:
    """Build both quantizations, time ours vs bm25s on the same postings, report ratios."""
    ids = [f"d{i}" for i in range(matrix.shape[0])]
    out: dict[str, Any] = {"docs": matrix.shape[0], "vocab": matrix.shape[1], "postings": int(matrix.nnz),
                           "queries": len(queries), "k": k, "threads": threads}
    for quant in ("none", "uint8"):
        t0 = time.perf_counter()
        build_inverted_index(ids, matrix, workdir / f"{name}-{quant}", quantization=quant)
        out[f"build_s_{quant}"] = time.perf_counter() - t0
    exact = InvertedIndex.open(workdir / f"{name}-none", verify=False)
    quantized = InvertedIndex.open(workdir / f"{name}-uint8", verify=False)
    retriever = retriever or bm25s_over(exact)
    engines = {"bm25s": _theirs(retriever, k), "ours_none": _ours(exact, k),
               "ours_uint8": _ours(quantized, k), "ours_uint8_arrays": _ours_arrays(quantized, k)}
    latency = _latencies({name: fns[0] for name, fns in engines.items()}, queries)
    qps_1 = _qps({name: fns[1](1 if name != "bm25s" else 0) for name, fns in engines.items()}, queries)
    qps_t = _qps({name: fns[1](threads) for name, fns in engines.items()}, queries)
    for name in engines:
        out[name] = {"latency": latency[name], "qps_1": qps_1[name], f"qps_{threads}": qps_t[name]}
    out["topk_agreement_with_bm25s"] = _agreement(exact, retriever, queries, k)
    out["topk_agreement_with_bm25s_uint8"] = _agreement(quantized, retriever, queries, k)  # the timed engine
    base = out["bm25s"]
    for engine in ("ours_none", "ours_uint8", "ours_uint8_arrays"):
        mine = out[engine]
        mine["latency_ratio_vs_bm25s"] = mine["latency"]["median_ms"] / base["latency"]["median_ms"]
        mine["qps_ratio_vs_bm25s"] = mine[f"qps_{threads}"] / base[f"qps_{threads}"]
    return out


def _acceptance(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Single-query latency (list API) and batch QPS (list API, array API) of uint8 postings vs bm25s."""
    rows = []
    for name, m in metrics.items():
        t, base = m["threads"], m["bm25s"]
        rows.append(entry(f"{name}: single-query median latency at k={m['k']} (ms), list API, <= bm25s",
                         m["ours_uint8"]["latency"]["median_ms"], "<=", base["latency"]["median_ms"]))
        for engine, api in (("ours_uint8", "list API"), ("ours_uint8_arrays", "array API")):
            for key in ("qps_1", f"qps_{t}"):
                rows.append(entry(f"{name}: batch QPS ({key[4:]} thread(s)), {api}, >= bm25s",
                                 m[engine][key], ">=", base[key]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic corpus size (0: skip)")
    parser.add_argument("--nnz", type=int, default=100, help="terms sampled per synthetic document")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    data_root = Path(os.environ.get("SPARSEKIT_DATA", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=data_root / "scifact")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sparse_engine.json")
    args = parser.parse_args()
    run = BenchmarkRun("sparse_engine")
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sparse-engine-") as tmp:
        if (args.data / "corpus.jsonl").is_file():
            matrix, queries, retriever = scifact(args.data)
            metrics["scifact"] = compare("scifact", matrix, queries, args.k, args.threads, Path(tmp),
                                         retriever)
        if args.docs:
            matrix, queries = synthetic(args.docs, args.nnz, args.vocab, args.queries, seed=0)
            metrics[f"synthetic_{args.docs}"] = compare("synthetic", matrix, queries, args.k, args.threads,
                                                        Path(tmp))
    run.report(metrics, _acceptance(metrics), args.out)


if __name__ == "__main__":
    main()
