"""Benchmark: BM25 on SciFact test, Lucene (pyserini / Anserini, our ``bm25`` index kind) vs bm25s.

Both systems index the same text per document, ``title + " " + text`` (Pyserini's BEIR "flat"
layout), with k1=0.9, b=0.4. Lucene uses Anserini's default English analyzer (Porter stemmer, Lucene
stopwords); bm25s (method "lucene") uses its English stopwords and PyStemmer's English stemmer when
PyStemmer is installed (the output says which). Quality: NDCG@10 and R@100 with pytrec_eval
(``ndcg_cut_10``, ``recall_100``), means over every query in ``qrels/test.tsv`` (an unanswered query
scores 0). Speed: two untimed warm-up passes (JIT, caches), then the median of three timed passes
of the whole query set as one batch (1 thread and ``--threads``) and as one call per query (1
thread); query analysis/tokenization and conversion to Python results are included for both. bm25s runs
twice: with its default numpy backend and with its numba backend (its fastest; same scores).
Acceptance: Lucene NDCG@10 = 0.679 ± 0.003 and R@100 = 0.925 ± 0.003 (the published Pyserini BM25
flat numbers). Prints one JSON object and writes
``benchmarks/results/bm25_scifact.json`` (../shared/docs/DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bm25s
import pytrec_eval

from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from retrieval.data.beir import load_qrels, load_queries
from retrieval.engines import jvm
from retrieval.index.bm25 import Bm25Index, build_bm25_index
from sparsekit.dataroot import dataset_path

K1, B, K = 0.9, 0.4, 100
TARGETS = {"ndcg@10": (0.679, 0.003), "recall@100": (0.925, 0.003)}

Hits = list[list[tuple[str, float]]]


def evaluate(qrels: dict[str, dict[str, int]], qids: list[str], hits: Hits) -> dict[str, float]:
    """Mean NDCG@10 and R@100 over every judged query (pytrec_eval; unanswered queries count 0)."""
    run = {q: {d: float(s) for d, s in h} for q, h in zip(qids, hits, strict=True) if h}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
    n = len(qrels)
    return {
        "ndcg@10": round(sum(per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels) / n, 4),
        "recall@100": round(sum(per_query.get(q, {}).get("recall_100", 0.0) for q in qrels) / n, 4),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    return statistics.median(_timed(fn)[1] for _ in range(repeats))


def _speed(batch: Callable[[int], Hits], single: Callable[[str], Any], texts: list[str], threads: int,
           warmup: int = 2, repeats: int = 3) -> tuple[Hits, dict[str, float]]:
    """Queries/s after ``warmup`` untimed passes (JIT, caches): median of ``repeats`` timed passes."""
    for _ in range(warmup):
        hits = batch(1)
        for t in texts:
            single(t)
    n = len(texts)
    t1 = _median_s(lambda: batch(1), repeats)
    tn = _median_s(lambda: batch(threads), repeats)
    tl = _median_s(lambda: [single(t) for t in texts], repeats)
    return hits, {"batch_qps_1_thread": round(n / t1, 1), f"batch_qps_{threads}_threads": round(n / tn, 1),
                  "loop_qps_1_thread": round(n / tl, 1), "loop_ms_per_query": round(1000 * tl / n, 3)}


def run_lucene(corpus: Path, texts: list[str], threads: int, workdir: Path) -> tuple[Hits, dict[str, Any]]:
    _, jvm_s = _timed(jvm.import_pyserini_lucene)  # JVM start + pyserini import, reported apart
    path, build_s = _timed(lambda: build_bm25_index(corpus, workdir / "bm25", k1=K1, b=B, threads=threads,
                                                    progress=False))
    index, open_s = _timed(lambda: Bm25Index.open(path))
    hits, speed = _speed(lambda th: index.batch_search(texts, k=K, threads=th),
                         lambda t: index.search(t, k=K), texts, threads)
    runtime = jvm.java_runtime()
    info = {"num_docs": index.num_docs, "jvm_start_s": round(jvm_s, 2), "build_s": round(build_s, 2),
            "open_s": round(open_s, 2), **speed, "java": f"{runtime.version} ({runtime.source})",
            "anserini": jvm.anserini_jar().name}
    index.close()
    return hits, info


def run_bm25s(corpus: Path, texts: list[str], threads: int,
              backend: str = "numpy") -> tuple[Hits, dict[str, Any]]:
    try:
        import Stemmer

        stemmer: Any = Stemmer.Stemmer("english")
        stemmer_name = "PyStemmer english (Snowball)"
    except ImportError:
        stemmer, stemmer_name = None, "none (PyStemmer not installed)"
    docs = [json.loads(line) for line in corpus.open(encoding="utf-8") if line.strip()]
    doc_ids = [d["_id"] for d in docs]
    contents = [d.get("title", "") + " " + d["text"] for d in docs]

    def build() -> Any:
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene", backend=backend)
        tokens = bm25s.tokenize(contents, stopwords="en", stemmer=stemmer, show_progress=False)
        retriever.index(tokens, show_progress=False)
        return retriever

    retriever, build_s = _timed(build)

    def search(queries: list[str], n_threads: int) -> Hits:
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False,
                                show_progress=False)
        idx, scores = retriever.retrieve(tokens, k=K, show_progress=False, n_threads=n_threads)
        return [[(doc_ids[i], float(s)) for i, s in zip(row, srow, strict=True) if s > 0]
                for row, srow in zip(idx, scores, strict=True)]

    hits, speed = _speed(lambda th: search(texts, th if th > 1 else 0), lambda t: search([t], 0), texts,
                         threads)
    return hits, {"num_docs": len(doc_ids), "build_s": round(build_s, 2), **speed,
                  "stemmer": stemmer_name, "stopwords": "bm25s english", "bm25s": bm25s.__version__,
                  "backend": backend}


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return round(a[key] / b[key], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bm25_scifact.json")
    args = parser.parse_args()
    run = BenchmarkRun("bm25_scifact")
    root = dataset_path("scifact")
    if root is None:
        sys.exit("dataset 'scifact' not found under the data root (set SPARSEKIT_DATA)")
    qrels = load_qrels(root / "qrels" / "test.tsv")
    queries = load_queries(root / "queries.jsonl")
    qids = [q for q in queries if q in qrels]
    texts = [queries[q] for q in qids]

    with tempfile.TemporaryDirectory(prefix="bm25_scifact-") as tmp:
        lucene_hits, lucene_info = run_lucene(root / "corpus.jsonl", texts, args.threads, Path(tmp))
    bm25s_hits, bm25s_info = run_bm25s(root / "corpus.jsonl", texts, args.threads)
    numba_hits, numba_info = run_bm25s(root / "corpus.jsonl", texts, args.threads, backend="numba")

    lucene_info.update(evaluate(qrels, qids, lucene_hits))
    bm25s_info.update(evaluate(qrels, qids, bm25s_hits))
    numba_info.update(evaluate(qrels, qids, numba_hits))
    metrics = {
        "dataset": "scifact", "split": "test", "num_queries": len(qids), "judged_queries": len(qrels),
        "k1": K1, "b": B, "k": K, "threads": args.threads,
        "lucene": lucene_info, "bm25s": bm25s_info, "bm25s_numba": numba_info,
        "bm25s_numba_vs_numpy_batch_qps_1_thread": _ratio(numba_info, bm25s_info, "batch_qps_1_thread"),
        "bm25s_vs_lucene_batch_qps_1_thread": _ratio(bm25s_info, lucene_info, "batch_qps_1_thread"),
        "bm25s_vs_lucene_loop_qps_1_thread": _ratio(bm25s_info, lucene_info, "loop_qps_1_thread"),
    }
    acceptance = []
    for name, (target, tol) in TARGETS.items():
        value = lucene_info[name]
        gap = round(abs(value - target), 4)
        criterion = (f"Lucene BM25 (k1={K1}, b={B}) SciFact test {name} = {target} ± {tol}: "
                     f"|measured {value} - {target}|")
        acceptance.append(entry(criterion, gap, "<=", tol, slack=1e-12))
    run.report(metrics, acceptance, args.out)


if __name__ == "__main__":
    main()
