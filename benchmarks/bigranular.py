"""Benchmark: bi-granular (BiDR) and hybrid indexes on SciFact, and a synthetic 1M x 384 scale test.

One run, issue 4's acceptance list. SciFact (BEIR): MiniLM (all-MiniLM-L6-v2) document and query
embeddings; the ``train`` qrels are split 80/20 (seeded) into train / dev for every training and tuning
step; ``test`` is evaluated once per system (NDCG@10, R@100: pytrec_eval, every judged query).

* Flat: exact inner product (faiss ``Flat``). Bi-granular: compact ``--ram-codes`` (default
  ``OPQ48_96,PQ48x4``: OPQ rotation to 96-d, 48 4-bit sub-quantizers, 24 B/doc) in RAM, top ``C = 1000``
  candidates, float16 vectors re-scored from an ``np.memmap`` 64 rows at a time. At 5,183 documents the
  fixed costs dominate the codes (an ``OPQ48,PQ48`` rotation alone is 384 x 384 floats = 590 KB, its
  codebooks 393 KB), hence the compact codes; the plain ``OPQ48,PQ48`` model (48 B/doc) is also built,
  for the contrastive comparison. RAM = the growth of the process's anonymous resident memory
  (``RssAnon`` in ``/proc/self/status``) when a fresh process opens the index and answers the test
  queries; pages of memory-mapped files (``RssFile``: the vector file, the id table) are page cache the
  kernel may drop, reported apart, not counted as RAM.
* Contrastive PQ: the plain faiss OPQ+PQ codebooks trained contrastively on the train queries (dev
  early stopping, assignment temperature chosen on dev), compared with plain PQ at the same bytes by
  code-only (ADC) R@100.
* Progressive: train-query candidates mined with the contrastive codes; MiniLM query encoder fine-tuned
  against them (random-walk batches; dev picks the best step); the test is searched through an index
  that carries the fine-tuned encoder, against the same index with the stock encoder.
* Hybrid: Lucene BM25 top-1000, dense re-score from the memmap, RRF and linear fusion (weight tuned on
  the train split); the fusion used for the criterion is the one with the best train NDCG@10.
* Scale: ``N`` = 100k and 1M synthetic vectors (SciFact document vectors tiled, plus Gaussian noise of
  norm ``--noise``, re-normalised), queries = the SciFact test query vectors; truth = exact top-10.
  Systems: ours (``OPQ48,IVF,PQ48`` codes + memmap re-score of ``C`` candidates), faiss IVFPQ (the same
  codes, no refine), faiss IVFPQ + ``IndexRefineFlat`` (the same codes, float32 refine store in RAM,
  ``k_factor = C / 10``), exact Flat. Each system runs in a fresh process, one query at a time on one
  thread: RAM (as above), index bytes on disk, p50/p99 latency, recall@10. Ours is also timed cold
  (its vector file dropped from the page cache with ``posix_fadvise(DONTNEED)`` first).

Prints one JSON object and writes ``benchmarks/results/bigranular.json`` (../shared/docs/DESIGN.md §7) and
``benchmarks/results/bigranular.png``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The machine is shared: OpenMP, BLAS and torch run one thread unless the caller sets these (contended
# OpenMP threads made faiss training ~8x slower here). Set before numpy, faiss or torch load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from benchmarks.acceptance import entry as judge
from benchmarks.environment import BenchmarkRun, rescore
from retrieval.data.beir import load_qrels, load_queries
from retrieval.evaluation import evaluate
from sparsekit.atomic import atomic_path
from sparsekit.dataroot import dataset_path

Qrels = dict[str, dict[str, int]]
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------- measurement in a fresh process


def memory() -> dict[str, int]:
    """Resident memory of this process in bytes: total, anonymous and file-backed (Linux /proc)."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        kib = {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile") if k in fields}
        return {"rss": kib["VmRSS"], "anon": kib.get("RssAnon", kib["VmRSS"]), "file": kib.get("RssFile", 0)}
    import psutil

    rss = psutil.Process().memory_info().rss
    return {"rss": rss, "anon": rss, "file": 0}


def _open_for_worker(spec: dict[str, Any]) -> Any:
    """A ``search(query [1, d]) -> rows`` callable for the index the spec names (modules already imported)."""
    import faiss

    from retrieval.index.bigranular import BiGranularIndex
    from retrieval.index.dense import DenseIndex

    k = spec["k"]
    if spec["kind"] == "bigranular":
        index = BiGranularIndex.open(spec["path"], verify=False, candidates=spec.get("candidates"),
                                     nprobe=spec.get("nprobe"), gpu=False)
        return lambda q: index.search_vectors(q, k)[1]
    if spec["kind"] == "dense":
        index = DenseIndex.open(spec["path"], verify=False, gpu=False)
        return lambda q: index.search_vectors(q, k)[1]
    index = faiss.read_index(spec["path"])
    if "nprobe" in spec:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", spec["nprobe"])
    if "k_factor" in spec:
        faiss.downcast_index(index).k_factor = spec["k_factor"]
    return lambda q: index.search(q, k)[1]


def _drop_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed_pass(search: Any, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    latencies, rows = [], []
    for q in queries:
        start = time.perf_counter()
        rows.append(search(q[None])[0])
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies, np.stack(rows)


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(np.mean(ms)), 3)}


def worker(spec_path: str) -> None:
    """Open one index in this (fresh) process, answer the queries one by one, report RAM and latency."""
    import faiss  # noqa: F401  (every module is imported before the baseline is taken)

    import retrieval.index.bigranular
    import retrieval.index.dense  # noqa: F401

    spec = json.loads(Path(spec_path).read_text())
    queries = np.load(spec["queries"])[: spec.get("max_queries")]
    if spec.get("cold_file"):
        _drop_page_cache(spec["cold_file"])
    gc.collect()
    before = memory()
    search = _open_for_worker(spec)
    opened = memory()
    out: dict[str, Any] = {}
    if spec.get("cold_file"):
        cold, _ = _timed_pass(search, queries)
        out["cold"] = _percentiles(cold)
    _timed_pass(search, queries[: min(20, len(queries))])  # warm-up
    warm, rows = _timed_pass(search, queries)
    after = memory()
    np.save(spec["rows_out"], rows)
    out.update(warm=_percentiles(warm), ram_bytes=max(opened["anon"], after["anon"]) - before["anon"],
               file_pages_bytes=after["file"] - before["file"], rss_delta_bytes=after["rss"] - before["rss"])
    print(json.dumps(out))


def measure(spec: dict[str, Any], work: Path) -> tuple[dict[str, Any], np.ndarray]:
    """Run :func:`worker` on ``spec`` in a fresh Python process; its report and result rows."""
    name = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    spec = {**spec, "rows_out": str(work / f"rows-{name}.npy")}
    path = work / f"spec-{name}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, "--worker", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed on {spec}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(spec["rows_out"])


def dir_bytes(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- SciFact data


@dataclass
class SciFact:
    root: Path
    doc_ids: list[str]
    docs: np.ndarray                 # [N, 384] MiniLM, unit rows
    texts: dict[str, str]            # query id -> text
    vectors: dict[str, np.ndarray]   # query id -> MiniLM vector
    train: Qrels
    dev: Qrels
    test: Qrels

    def positives(self, qrels: Qrels) -> list[list[int]]:
        """Corpus rows judged relevant to each query of ``qrels``, in order."""
        row = {d: i for i, d in enumerate(self.doc_ids)}
        return [[row[d] for d, g in judged.items() if g > 0 and d in row] for judged in qrels.values()]

    def matrix(self, qrels: Qrels) -> np.ndarray:
        return np.stack([self.vectors[q] for q in qrels])


def encode_queries(texts: dict[str, str], cache: Path) -> dict[str, np.ndarray]:
    """MiniLM query vectors, cached under ``cache`` by a hash of the texts (pure function of its input)."""
    from retrieval.encoders.dense import DenseEncoder

    qids = sorted(texts)
    key = hashlib.sha256(json.dumps([[q, texts[q]] for q in qids]).encode()).hexdigest()[:16]
    path = cache / f"queries-{key}.npy"
    if path.is_file():
        matrix = np.load(path)
    else:
        matrix = DenseEncoder.from_minilm().encode([texts[q] for q in qids], progress=False)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, matrix)
    return dict(zip(qids, matrix, strict=True))


def load_scifact(cache: Path, seed: int) -> SciFact:
    from retrieval.index.corpus_embeddings import embed_corpus

    root = dataset_path("scifact")
    if root is None:
        sys.exit("dataset 'scifact' not found under the data root (set SPARSEKIT_DATA)")
    doc_ids, docs = embed_corpus(root / "corpus.jsonl", cache, progress=False)
    queries = load_queries(root / "queries.jsonl")
    train_all, test = load_qrels(root / "qrels" / "train.tsv"), load_qrels(root / "qrels" / "test.tsv")
    qids = sorted(train_all)
    np.random.default_rng(seed).shuffle(qids)
    dev_ids = set(qids[: len(qids) // 5])
    texts = {q: queries[q] for q in {*train_all, *test}}
    return SciFact(root, doc_ids, docs, texts, encode_queries(texts, cache),
                   {q: r for q, r in train_all.items() if q not in dev_ids},
                   {q: r for q, r in train_all.items() if q in dev_ids}, test)


def run_metrics(data: SciFact, qrels: Qrels, rows: np.ndarray, scores: np.ndarray | None = None
                ) -> dict[str, float]:
    """NDCG@10 / R@100 of ranked corpus rows (best first) for the queries of ``qrels``, in order."""
    run = {}
    for i, qid in enumerate(qrels):
        valid = rows[i][rows[i] >= 0]
        values = scores[i][rows[i] >= 0] if scores is not None else -np.arange(len(valid), dtype=float)
        run[qid] = {data.doc_ids[r]: float(s) for r, s in zip(valid, values, strict=True)}
    means = evaluate(qrels, run).means
    return {"ndcg@10": round(means["ndcg@10"], 4), "recall@100": round(means["recall@100"], 4)}


def hits_metrics(qrels: Qrels, hits: list[list[tuple[str, float]]]) -> dict[str, float]:
    from retrieval.evaluation import run_from_hits

    means = evaluate(qrels, run_from_hits(list(qrels), hits)).means
    return {"ndcg@10": round(means["ndcg@10"], 4), "recall@100": round(means["recall@100"], 4)}


# ---------------------------------------------------------------- SciFact: flat, bi-granular, contrastive


def scifact_indexes(data: SciFact, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Flat vs bi-granular: quality on test, measured RAM, bytes per document.

    The RAM comparison uses the compact ``--ram-codes`` (trained by faiss on the corpus); the plain
    ``OPQ{m},PQ{m}`` model (``m`` B/doc) is trained too, as the contrastive stage's start and baseline.
    """
    from retrieval.index.bigranular import BiGranularConfig, BiGranularIndex, build_bigranular_index
    from retrieval.index.dense import DenseConfig, DenseIndex, build_dense_index
    from retrieval.quantization.contrastive_pq import ContrastivePQ

    vectors = (data.doc_ids, data.docs)
    flat_path = build_dense_index(None, work / "flat", DenseConfig("Flat"), vectors=vectors, progress=False)
    start = time.perf_counter()
    compact = BiGranularConfig(codes=args.ram_codes, candidates=args.candidates,
                               opq_iterations=args.opq_iterations, seed=args.seed)
    bi_path = build_bigranular_index(None, work / "bigranular-ram", compact, vectors=vectors, progress=False)
    ram_codes_s = time.perf_counter() - start
    start = time.perf_counter()
    plain = ContrastivePQ.train_opq(data.docs, args.m, opq_iterations=args.opq_iterations)
    opq_s = time.perf_counter() - start
    config = BiGranularConfig(codes=f"OPQ{args.m},PQ{args.m}", candidates=args.candidates)
    plain_path = build_bigranular_index(None, work / "bigranular", config, vectors=vectors,
                                        code_index=plain.to_faiss(), progress=False)
    test_q = data.matrix(data.test)
    np.save(work / "test_queries.npy", test_q)
    flat, bi = DenseIndex.open(flat_path), BiGranularIndex.open(bi_path)
    plain_bi = BiGranularIndex.open(plain_path)
    out: dict[str, Any] = {"num_docs": len(data.doc_ids), "ram_codes": args.ram_codes,
                           "ram_codes_train_s": round(ram_codes_s, 1), "opq_train_s": round(opq_s, 1),
                           "m": args.m, "candidates": args.candidates}
    out["flat"] = run_metrics(data, data.test, *reversed(flat.search_vectors(test_q, 100)))
    out["bigranular"] = run_metrics(data, data.test, *reversed(bi.search_vectors(test_q, 100)))
    out["bigranular_adc"] = run_metrics(data, data.test, *reversed(bi.coarse(test_q, 100)))
    out["plain_bigranular"] = run_metrics(data, data.test, *reversed(plain_bi.search_vectors(test_q, 100)))
    out["plain_pq_adc"] = run_metrics(data, data.test, *reversed(plain_bi.coarse(test_q, 100)))
    for name, kind, path in (("flat", "dense", flat_path), ("bigranular", "bigranular", bi_path)):
        report, _ = measure({"kind": kind, "path": str(path), "queries": str(work / "test_queries.npy"),
                             "k": 100}, work)
        out[name].update(ram_bytes=report["ram_bytes"], ram_bytes_per_doc=round(report["ram_bytes"] / len(
            data.doc_ids), 1), file_pages_bytes=report["file_pages_bytes"], index_bytes=dir_bytes(path),
            p50_ms=report["warm"]["p50_ms"], p99_ms=report["warm"]["p99_ms"])
    counts = bi.manifest.counts
    out["bigranular"].update(codes=args.ram_codes, code_bytes_per_doc=counts["code_bytes"],
                             codes_file_bytes=counts["codes_file_bytes"])
    out["plain_bigranular"]["code_bytes_per_doc"] = plain.code_bytes
    out["ram_ratio"] = round(out["bigranular"]["ram_bytes"] / out["flat"]["ram_bytes"], 4)
    out["recall100_ratio"] = round(out["bigranular"]["recall@100"] / out["flat"]["recall@100"], 4)
    out["plain_model"] = plain
    return out


def train_contrastive(data: SciFact, plain: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Contrastive PQ from the plain codebooks; dev R@100 (codes only) picks the epoch and temperature."""
    from retrieval.quantization.contrastive_pq import ContrastivePQ, ContrastivePQConfig, train_contrastive_pq

    dev_q = data.matrix(data.dev)

    def dev_recall(model: ContrastivePQ) -> float:
        index = model.to_faiss()
        index.add(data.docs)
        scores, rows = index.search(dev_q, 100)
        return run_metrics(data, data.dev, rows, scores)["recall@100"]

    queries = data.matrix(data.train)
    positives = data.positives(data.train)
    best, report = None, {"temperatures": {}}
    start = time.perf_counter()
    for tau in args.pq_temperatures:
        model = ContrastivePQ(plain.rotation.clone(), plain.codebooks.detach().clone())
        config = ContrastivePQConfig(assign_temperature=tau, epochs=args.pq_epochs, seed=args.seed)
        history = train_contrastive_pq(model, queries, positives, data.docs, config, dev=dev_recall,
                                       progress=False)
        dev = max(h["dev"] for h in history)
        report["temperatures"][str(tau)] = {"dev_recall@100": dev, "history": history}
        if best is None or dev > best[0]:
            best = (dev, tau, model)
    assert best is not None
    report.update({"train_s": round(time.perf_counter() - start, 1), "chosen_temperature": best[1],
                   "dev_recall@100": best[0]})
    return best[2], report


def contrastive_vs_plain(data: SciFact, model: Any, plain_adc: dict[str, float], args: argparse.Namespace,
                         work: Path) -> tuple[Path, dict[str, Any]]:
    """Codes-only R@100 of the contrastive codes vs plain PQ (same bytes), and their bi-granular index."""
    from retrieval.index.bigranular import BiGranularConfig, BiGranularIndex, build_bigranular_index

    config = BiGranularConfig(codes=f"contrastive OPQ{args.m},PQ{args.m}", candidates=args.candidates)
    vectors = (data.doc_ids, data.docs)
    path = build_bigranular_index(None, work / "bigranular-contrastive", config, vectors=vectors,
                                  code_index=model.to_faiss(), progress=False)
    index = BiGranularIndex.open(path)
    test_q = data.matrix(data.test)
    adc = run_metrics(data, data.test, *reversed(index.coarse(test_q, 100)))
    rescored = run_metrics(data, data.test, *reversed(index.search_vectors(test_q, 100)))
    out = {"code_bytes_per_doc": model.code_bytes, "plain_pq_adc": plain_adc, "contrastive_pq_adc": adc,
           "recall100_gain": round(adc["recall@100"] - plain_adc["recall@100"], 4),
           "bigranular_contrastive": rescored}
    return path, out


def recall_vs_candidates(data: SciFact, paths: dict[str, Path], sizes: list[int]) -> dict[str, Any]:
    """Test R@100 / NDCG@10 of each bi-granular index for several candidate counts C."""
    from retrieval.index.bigranular import BiGranularIndex

    test_q = data.matrix(data.test)
    curve: dict[str, Any] = {}
    for name, path in paths.items():
        curve[name] = {}
        for c in sizes:
            index = BiGranularIndex.open(path, verify=False, candidates=c)
            curve[name][str(c)] = run_metrics(data, data.test, *reversed(index.search_vectors(test_q, 100)))
    return curve


# ---------------------------------------------------------------- progressive optimization


def progressive(data: SciFact, codes_path: Path, model: Any, args: argparse.Namespace, work: Path
                ) -> dict[str, Any]:
    """Fine-tune the query encoder against code-mined candidates; test with vs without it."""
    from retrieval.encoders.dense import DenseEncoder, save_dense_encoder
    from retrieval.index import open_index
    from retrieval.index.bigranular import BiGranularConfig, BiGranularIndex, build_bigranular_index
    from retrieval.training.progressive import (
        ProgressiveConfig,
        finetune_query_encoder,
        mine_candidates,
    )

    base = BiGranularIndex.open(codes_path)
    config = ProgressiveConfig(steps=args.progressive_steps, seed=args.seed)
    candidates = mine_candidates(base.coarse, data.matrix(data.train), config.candidates)
    encoder = DenseEncoder.from_minilm(device="cpu")
    dev_texts = [data.texts[q] for q in data.dev]

    def dev_ndcg(enc: DenseEncoder) -> float:
        scores, rows = base.search_vectors(enc.encode(dev_texts, progress=False), 100)
        return run_metrics(data, data.dev, rows, scores)["ndcg@10"]

    start = time.perf_counter()
    history = finetune_query_encoder(encoder, [data.texts[q] for q in data.train], data.positives(data.train),
                                     candidates, base.store.gather, config, dev=dev_ndcg, progress=False)
    train_s = time.perf_counter() - start
    saved = save_dense_encoder(encoder, work / "query-encoder", overwrite=True)
    path = build_bigranular_index(None, work / "bigranular-progressive", BiGranularConfig(
        codes=base.manifest.params["codes"], candidates=args.candidates), vectors=(data.doc_ids, data.docs),
        code_index=model.to_faiss(), query_encoder=saved, progress=False)
    texts = [data.texts[q] for q in data.test]
    with_step = hits_metrics(data.test, open_index(path).batch_search(texts, 100))
    without = run_metrics(data, data.test, *reversed(base.search_vectors(data.matrix(data.test), 100)))
    return {"steps": config.steps, "sampling": config.sampling, "lr": config.lr,
            "batch_size": config.batch_size,
            "candidates_mined": config.candidates, "train_s": round(train_s, 1), "dev_history": history,
            "test_without": without, "test_with": with_step,
            "ndcg10_gain": round(with_step["ndcg@10"] - without["ndcg@10"], 4),
            "recall100_gain": round(with_step["recall@100"] - without["recall@100"], 4)}


# ---------------------------------------------------------------- hybrid


def hybrid(data: SciFact, flat_test: dict[str, float], args: argparse.Namespace, work: Path
           ) -> dict[str, Any]:
    """BM25 (Lucene) first stage + dense re-score + RRF / linear fusion; weight and fusion chosen on train."""
    from dataclasses import replace

    from retrieval.index.hybrid import HybridConfig, HybridIndex, build_hybrid_index, tune_linear_weight

    corpus = data.root / "corpus.jsonl"
    first_stages = {"bm25": "bm25"}
    if args.sparse_index:
        first_stages["learned_sparse"] = str(args.sparse_index)
    out: dict[str, Any] = {"dense_alone": flat_test, "depth": args.hybrid_depth}
    for name, first_stage in first_stages.items():
        path = build_hybrid_index(corpus, work / f"hybrid-{name}", first_stage,
                                  HybridConfig(depth=args.hybrid_depth),
                                  first_stage_params={"threads": 2} if first_stage == "bm25" else None,
                                  vectors=(data.doc_ids, data.docs), overwrite=True, progress=False)
        index = HybridIndex.open(path)
        split = {}
        for label, qrels in (("train", {**data.train, **data.dev}), ("test", data.test)):
            texts = [data.texts[q] for q in qrels]
            first = index.first_stage.batch_search(texts, args.hybrid_depth, 2)
            split[label] = (qrels, first, data.matrix(qrels))
        train_qrels, train_first, train_q = split["train"]
        alpha, table = tune_linear_weight(index, train_first, train_q, list(train_qrels), train_qrels)
        configs = {"rrf": replace(index.config, fusion="rrf"),
                   "linear": replace(index.config, fusion="linear", alpha=alpha)}
        result: dict[str, Any] = {"alpha": alpha, "train_ndcg10_by_alpha": table}
        for label, (qrels, first, qv) in split.items():
            result[f"{label}_sparse_alone"] = hits_metrics(qrels, [h[:100] for h in first])
            for fusion, config in configs.items():
                hits = [index.rerank(h, q, 100, config) for h, q in zip(first, qv, strict=True)]
                result[f"{label}_{fusion}"] = hits_metrics(qrels, hits)
        result["chosen_fusion"] = max(configs, key=lambda f: result[f"train_{f}"]["ndcg@10"])
        result["test_hybrid"] = result[f"test_{result['chosen_fusion']}"]
        best_single = max(result["test_sparse_alone"]["ndcg@10"], flat_test["ndcg@10"])
        result["ndcg10_margin"] = round(result["test_hybrid"]["ndcg@10"] - best_single, 4)
        index.close()
        out[name] = result
    return out


# ---------------------------------------------------------------- scale: synthetic 1M x 384


def synthetic_corpus(docs: np.ndarray, n: int, noise: float, seed: int, path: Path, chunk: int = 100_000
                     ) -> np.ndarray:
    """``n`` unit vectors: real document vectors tiled, plus Gaussian noise of norm ~``noise``."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, docs.shape[1]))
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk)) % len(docs)
        block = docs[rows] + rng.normal(scale=noise / np.sqrt(docs.shape[1]), size=(len(rows), docs.shape[1]))
        out[start:start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r")


def exact_top(corpus: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact top-``k`` rows by inner product (chunked over the corpus)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(corpus), chunk):
        scores = queries @ np.asarray(corpus[start:start + chunk]).T
        s = np.concatenate([best_s, scores], axis=1)
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        r = np.concatenate([best_r, rows], axis=1)
        keep = np.argsort(-s, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(s, keep, 1), np.take_along_axis(r, keep, 1)
    return best_r


def recall_at(rows: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return round(float(np.mean([len(set(r[:k]) & set(t)) / k for r, t in zip(rows, truth, strict=True)])), 4)


def train_code_index(corpus: np.ndarray, args: argparse.Namespace) -> tuple[Any, str, float]:
    """One OPQ+IVF+PQ code index, trained on a sample of the largest corpus and shared by every size."""
    from retrieval.index.faiss_index import new_faiss_index

    nlist = args.nlist_per_sqrt * int(np.sqrt(len(corpus)))
    factory = f"OPQ{args.m},IVF{nlist},PQ{args.m}"
    index = new_faiss_index(factory, corpus.shape[1], args.scale_opq_iterations)
    start = time.perf_counter()
    sample = np.sort(np.random.default_rng(args.seed).choice(len(corpus), args.train_size, replace=False))
    index.train(np.ascontiguousarray(corpus[sample]))
    return index, factory, time.perf_counter() - start


def build_baselines(codes: str, matrix: np.ndarray, n: int, args: argparse.Namespace, work: Path) -> None:
    """faiss IVFPQ + IndexRefineFlat (the same codes, float32 refine store) and exact Flat, on disk."""
    import faiss

    dense = np.ascontiguousarray(matrix)  # kept alive while faiss copies it into the refine store
    refine = faiss.IndexRefineFlat(faiss.read_index(codes), faiss.swig_ptr(dense))
    refine.k_factor = args.scale_candidates / 10
    faiss.write_index(refine, str(work / f"refine-{n}.faiss"))
    del refine
    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(dense)
    faiss.write_index(flat, str(work / f"flat-{n}.faiss"))
    del flat, dense
    gc.collect()


def scale_point(corpus: np.ndarray, n: int, trained: Any, queries: Path, truth: np.ndarray,
                args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Ours + the faiss baselines on the first ``n`` synthetic vectors, each measured in a fresh process."""
    import faiss

    from retrieval.index.bigranular import CODES_FILE, VECTORS_FILE, BiGranularConfig, build_bigranular_index

    start = time.perf_counter()
    config = BiGranularConfig(codes="OPQ+IVF+PQ (shared)", candidates=args.scale_candidates,
                              nprobe=args.nprobe)
    ids = [f"s{i}" for i in range(n)]
    ours = build_bigranular_index(None, work / f"ours-{n}", config, vectors=(ids, corpus[:n]),
                                  code_index=faiss.clone_index(trained), progress=False)
    build_s = time.perf_counter() - start
    codes = str(ours / CODES_FILE)
    build_baselines(codes, corpus[:n], n, args, work)
    base = {"queries": str(queries), "k": 10}
    refine, flat = work / f"refine-{n}.faiss", work / f"flat-{n}.faiss"
    systems = {
        "ours_bigranular": ({**base, "kind": "bigranular", "path": str(ours), "nprobe": args.nprobe,
                             "candidates": args.scale_candidates, "cold_file": str(ours / VECTORS_FILE)},
                            ours),
        "faiss_ivfpq": ({**base, "kind": "faiss", "path": codes, "nprobe": args.nprobe}, Path(codes)),
        "faiss_ivfpq_refineflat": ({**base, "kind": "faiss", "path": str(refine), "nprobe": args.nprobe},
                                   refine),
        "faiss_flat": ({**base, "kind": "faiss", "path": str(flat), "max_queries": args.flat_queries}, flat),
    }
    out: dict[str, Any] = {"num_docs": n, "ours_build_s": round(build_s, 1)}
    for name, (spec, path) in systems.items():
        report, rows = measure(spec, work)
        out[name] = {"ram_bytes": report["ram_bytes"], "ram_bytes_per_doc": round(report["ram_bytes"] / n, 2),
                     "file_pages_bytes": report["file_pages_bytes"], "index_bytes": dir_bytes(path),
                     "recall@10": recall_at(rows, truth[:len(rows)]), "queries": len(rows), **report["warm"]}
        if "cold" in report:
            out[name]["cold"] = report["cold"]
    out["ours_bigranular"]["codes_bytes"] = Path(codes).stat().st_size
    return out


def scale(docs: np.ndarray, queries: np.ndarray, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The scale comparison at each size in ``--scale-sizes`` and the latency growth between the extremes."""
    start = time.perf_counter()
    sizes = sorted(args.scale_sizes)
    corpus = synthetic_corpus(docs, sizes[-1], args.noise, args.seed, work / "synthetic.npy")
    queries_path = work / "scale_queries.npy"
    np.save(queries_path, queries)
    generate_s = time.perf_counter() - start
    trained, factory, train_s = train_code_index(corpus, args)
    out: dict[str, Any] = {"noise_norm": args.noise, "queries": len(queries), "codes": factory,
                           "nprobe": args.nprobe, "candidates": args.scale_candidates,
                           "opq_iterations": args.scale_opq_iterations, "train_size": args.train_size,
                           "generate_s": round(generate_s, 1), "train_s": round(train_s, 1), "points": {}}
    for n in sizes:
        truth = exact_top(corpus[:n], queries, 10)
        out["points"][str(n)] = scale_point(corpus, n, trained, queries_path, truth, args, work)
    small, large = out["points"][str(sizes[0])], out["points"][str(sizes[-1])]
    systems = [name for name, value in large.items() if isinstance(value, dict) and "p50_ms" in value]
    out["latency_growth_p50"] = {name: round(large[name]["p50_ms"] / small[name]["p50_ms"], 2)
                                 for name in systems}
    out["size_growth"] = sizes[-1] / sizes[0]
    return out


# ---------------------------------------------------------------- report


def plot(curve: dict[str, Any], flat_recall: float, scale_out: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if scale_out else 1, figsize=(11 if scale_out else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    for name, points in curve.items():
        sizes = [int(c) for c in points]
        ax.plot(sizes, [points[str(c)]["recall@100"] for c in sizes], marker="o", label=name)
    ax.axhline(flat_recall, color="gray", ls="--", label="flat float32")
    ax.axhline(0.98 * flat_recall, color="gray", ls=":", label="0.98 x flat")
    ax.set(xscale="log", xlabel="candidates C (codes -> memmap re-score)", ylabel="SciFact test R@100",
           title="Bi-granular: recall vs C")
    ax.legend(fontsize=8)
    if scale_out:
        ax = axes[0][1]
        sizes = sorted(int(n) for n in scale_out["points"])
        for name in ("ours_bigranular", "faiss_ivfpq", "faiss_ivfpq_refineflat", "faiss_flat"):
            p50 = [scale_out["points"][str(n)][name]["p50_ms"] for n in sizes]
            ax.plot(sizes, p50, marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="documents", ylabel="p50 latency (ms, 1 thread)",
               title="Synthetic 384-d corpus")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


entry = functools.partial(judge, digits=4)


def acceptance(m: dict[str, Any]) -> list[dict[str, Any]]:
    sci, pq, prog, hyb = m["scifact"], m["contrastive_pq"], m["progressive"], m["hybrid"]["bm25"]
    out = [
        entry(f"Bi-granular vs flat (SciFact test, {sci['ram_codes']} codes, C={sci['candidates']}): R@100 "
              "bi-granular / R@100 flat float32", sci["recall100_ratio"], ">=", 0.98),
        entry(f"Bi-granular RAM <= 1/16 of flat's, SciFact ({sci['num_docs']:,} docs; {sci['ram_codes']} "
              f"codes, {sci['bigranular']['code_bytes_per_doc']} B/doc, + float16 memmap re-score): measured "
              "anonymous RSS growth ratio", sci["ram_ratio"], "<=", 0.0625),
        entry(f"Contrastive vs plain faiss PQ at equal bytes ({pq['code_bytes_per_doc']} B/doc): "
              "codes-only test R@100 contrastive - plain", pq["recall100_gain"], ">", 0.0),
        entry("Progressive optimization: test NDCG@10 gain over no progressive step (bi-granular, "
              "contrastive codes)", prog["ndcg10_gain"], ">", 0.0),
        entry(f"Hybrid (BM25 + dense, {hyb['chosen_fusion']} chosen on train): test NDCG@10 - max(sparse "
              "alone, dense alone)", hyb["ndcg10_margin"], ">=", 0.01),
    ]
    if "scale" in m:
        points = m["scale"]["points"]
        big = points[str(max(int(n) for n in points))]
        n = f"{big['num_docs']:,}"
        ours, refine, flat = big["ours_bigranular"], big["faiss_ivfpq_refineflat"], big["faiss_flat"]
        out += [
            entry(f"Scale, bi-granular RAM <= 1/16 of flat's at {n} docs (measured anonymous RSS ratio)",
                  ours["ram_bytes"] / flat["ram_bytes"], "<=", 0.0625),
            entry(f"Scale ({n}; target set here, the issue asks to report): recall@10 ours / IVFPQ + "
                  "RAM-resident IndexRefineFlat (same codes, same candidates)",
                  ours["recall@10"] / refine["recall@10"], ">=", 0.99),
            entry(f"Scale ({n}; target set here): RAM ours / IVFPQ + IndexRefineFlat",
                  ours["ram_bytes"] / refine["ram_bytes"], "<=", 0.0625),
            entry(f"Scale ({n}; target set here, a sanity check: the exact re-score of IVFPQ's own "
                  "candidates cannot lose recall, so this can only fail at equality): recall@10 ours - IVFPQ "
                  "without refine", ours["recall@10"] - big["faiss_ivfpq"]["recall@10"], ">", 0.0),
            entry(f"Scale (target set here): p50 latency growth of ours from {min(int(k) for k in points):,} "
                  f"to {n} docs, at most the {m['scale']['size_growth']:.0f}x data growth",
                  m["scale"]["latency_growth_p50"]["ours_bigranular"], "<=", m["scale"]["size_growth"]),
        ]
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "bigranular.json")
    parser.add_argument("--rescore", action="store_true",
                        help="only rebuild the acceptance entries of --out from its stored metrics")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bigranular")
    parser.add_argument("--m", type=int, default=48, help="PQ sub-quantizers = bytes per document")
    parser.add_argument("--ram-codes", default="OPQ48_96,PQ48x4",
                        help="SciFact flat-vs-bi-granular codes (faiss factory); the default is 24 B/doc: "
                             "OPQ to 96-d, 48 4-bit sub-quantizers")
    parser.add_argument("--candidates", type=int, default=1000, help="C on SciFact")
    parser.add_argument("--opq-iterations", type=int, default=25)
    parser.add_argument("--pq-temperatures", type=float, nargs="+", default=[0.01, 0.003])
    parser.add_argument("--pq-epochs", type=int, default=8)
    parser.add_argument("--progressive-steps", type=int, default=300)
    parser.add_argument("--hybrid-depth", type=int, default=1000)
    parser.add_argument("--sparse-index", type=Path, help="a learned-sparse index of SciFact: also a hybrid "
                                                          "first stage")
    parser.add_argument("--scale-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--scale-candidates", type=int, default=100)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--nlist-per-sqrt", type=int, default=2, help="IVF lists = this x sqrt(N)")
    parser.add_argument("--train-size", type=int, default=65_536, help="scale: code index training sample")
    parser.add_argument("--scale-opq-iterations", type=int, default=10)
    parser.add_argument("--flat-queries", type=int, default=100, help="scale: queries timed on exact Flat")
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to tiled vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the built indexes under --work")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker)
        return
    if args.rescore:
        rescore(args.out, acceptance)
        return
    run = BenchmarkRun("bigranular")
    work = args.work / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages: dict[str, float] = {}

    def stage(name: str, fn: Any, *a: Any) -> Any:
        t = time.perf_counter()
        result = fn(*a)
        stages[name] = round(time.perf_counter() - t, 1)
        print(f"[bigranular] {name}: {stages[name]} s", file=sys.stderr, flush=True)
        return result

    data = stage("embeddings", load_scifact, args.work / "cache", args.seed)
    sci = stage("flat_vs_bigranular", scifact_indexes, data, args, work)
    plain = sci.pop("plain_model")
    model, training = stage("contrastive_training", train_contrastive, data, plain, args)
    contrastive_path, pq = stage("contrastive_eval", contrastive_vs_plain, data, model, sci["plain_pq_adc"],
                                 args, work)
    pq["training"] = training
    indexes = {f"compact {args.ram_codes} codes": work / "bigranular-ram",
               "plain OPQ+PQ codes": work / "bigranular", "contrastive codes": contrastive_path}
    curve = stage("recall_vs_candidates", recall_vs_candidates, data, indexes, [100, 200, 500, 1000])
    prog = stage("progressive", progressive, data, contrastive_path, model, args, work)
    hyb = stage("hybrid", hybrid, data, sci["flat"], args, work)
    splits = {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}
    metrics: dict[str, Any] = {
        "dataset": "scifact", "threads": int(os.environ["OMP_NUM_THREADS"]), "splits": splits,
        "scifact": sci, "recall_vs_candidates": curve, "contrastive_pq": pq, "progressive": prog,
        "hybrid": hyb}
    if args.scale_sizes:
        metrics["scale"] = stage("scale", scale, data.docs, data.matrix(data.test), args, work)
    metrics["stages_s"] = stages
    plot(curve, sci["flat"]["recall@100"], metrics.get("scale"), args.out.with_suffix(".png"))
    run.report(metrics, acceptance(metrics), args.out)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
