"""CLI for retrieval: ``sparsekit index`` (build any index kind), ``search`` and ``eval`` (BEIR metrics).

Python API: :func:`retrieval.index.build_index`, :func:`retrieval.index.open_index`,
:func:`retrieval.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from services.commands.output import console, err, fail, naming_options, refuse_inside_artifact
from sparsekit.errors import SparsekitError


def _index_params(kind: str, opts: dict) -> dict:
    """The build options that apply to ``kind`` (the CLI exposes the common ones of each)."""
    if kind == "bm25":
        return {k: opts[k] for k in ("k1", "b", "threads")}
    if kind == "sparse":
        return {k: opts[k] for k in ("model", "quantization", "top_k", "batch_size")}
    common = {"batch_size": opts["batch_size"], "cache_dir": opts["cache_dir"]}
    if kind == "dense":
        return {**common, "factory": opts["factory"], "nprobe": opts["nprobe"]}
    if kind == "bigranular":
        return {**common, "codes": opts["codes"], "candidates": opts["candidates"], "nprobe": opts["nprobe"]}
    if kind == "hybrid":
        first = opts["first_stage"]  # a kind to build with its own options, or an index directory
        params = _index_params(first, opts) if first in ("bm25", "sparse") else None
        return {**common, "first_stage": first, "first_stage_params": params, "fusion": opts["fusion"],
                "alpha": opts["alpha"], "depth": opts["depth"]}
    from retrieval.index import KINDS

    raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")


def _refuse_unused(ctx: typer.Context, kind: str, opts: dict, params: dict) -> None:
    """Options given on the command line that ``kind`` does not read are an error, not silently dropped
    (``--model`` without ``--kind sparse`` used to build a BM25 index)."""
    used = set(params) | set(params.get("first_stage_params") or ())
    given = [name for name in opts if name not in used
             and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if given:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        fail(ValueError(f"{flags}: not read by --kind {kind} (see `sparsekit index --help` for which kind "
                        "takes which option)"))


def index_command(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl, or a BEIR folder holding one.")],
    out: Annotated[Path, typer.Option(help="Index directory to create (written atomically).")],
    kind: Annotated[str, typer.Option(help="bm25 (Lucene), sparse (learned; needs --model), dense (faiss), "
                                           "bigranular (PQ codes in RAM + vectors on disk) or hybrid "
                                           "(first stage + dense re-score + fusion).")] = "bm25",
    model: Annotated[Path | None, typer.Option(help="sparse (and hybrid over sparse): a model dir.")] = None,
    k1: Annotated[float, typer.Option(
        min=0, help="bm25 (and hybrid over bm25): k1 (recorded in the manifest, used at search).")] = 0.9,
    b: Annotated[float, typer.Option(min=0, max=1, help="bm25 (and hybrid over bm25): b.")] = 0.4,
    threads: Annotated[int, typer.Option(min=1, help="bm25 (and hybrid over bm25): indexing threads.")] = 2,
    quantization: Annotated[str, typer.Option(help="sparse (and hybrid over sparse): uint8, uint16 or "
                                                   "none.")] = "uint8",
    top_k: Annotated[int | None, typer.Option(
        min=1, help="sparse (and hybrid over sparse): keep each document's top-k terms (default: all).")]
    = None,
    batch_size: Annotated[int, typer.Option(min=1, help="sparse/dense: encoding batch size.")] = 32,
    factory: Annotated[str, typer.Option(help="dense: faiss factory string (Flat, HNSW32, "
                                              "IVF1024,PQ48).")] = "Flat",
    codes: Annotated[str, typer.Option(help="bigranular: the in-RAM codes (faiss factory).")] = "OPQ48,PQ48",
    candidates: Annotated[int, typer.Option(
        min=1, help="bigranular: candidates C re-scored from disk.")] = 1000,
    nprobe: Annotated[int, typer.Option(min=1, help="dense/bigranular IVF: lists probed (DenseConfig's "
                                                   "Python default is 16).")] = 32,
    first_stage: Annotated[str, typer.Option(help="hybrid: bm25, sparse or an index directory.")] = "bm25",
    fusion: Annotated[str, typer.Option(help="hybrid: rrf or linear (min-max normalised). The CLI defaults "
                                             "to linear, alpha 0.65: the weight benchmarks/bigranular.py "
                                             "chose for BM25 + MiniLM on SciFact train queries "
                                             "(HybridConfig's Python default is rrf).")] = "linear",
    alpha: Annotated[float, typer.Option(
        min=0, max=1, help="hybrid linear: weight of the dense score (tune it on your own train "
                           "queries for another corpus or first stage).")] = 0.65,
    depth: Annotated[int, typer.Option(min=1, help="hybrid: first-stage candidates re-scored.")] = 1000,
    cache_dir: Annotated[Path | None, typer.Option(help="dense kinds: corpus-embedding cache (default: "
                                                        "none, the corpus is embedded each time).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index at OUT.")] = False,
) -> None:
    """Build an index over a corpus. The directory appears only when the build has finished."""
    from retrieval.index import build_index

    start = time.perf_counter()
    opts = {"model": model, "k1": k1, "b": b, "threads": threads, "quantization": quantization,
            "top_k": top_k, "batch_size": batch_size, "factory": factory, "codes": codes,
            "candidates": candidates, "nprobe": nprobe, "first_stage": first_stage, "fusion": fusion,
            "alpha": alpha, "depth": depth, "cache_dir": cache_dir}
    refuse_inside_artifact(cache_dir, "--cache-dir")  # now, not after the corpus is embedded
    try:
        params = _index_params(kind, opts)
    except ValueError as exc:
        fail(exc)
    _refuse_unused(ctx, kind, opts, params)
    try:
        with naming_options({name: f"--{name.replace('_', '-')}" for name in opts}, only_renamed=True):
            path = build_index(kind, corpus, out, overwrite=overwrite, **params)
    except (SparsekitError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    console.print(f"built {kind} index at {path} in {time.perf_counter() - start:.1f}s")


def search_command(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    query: Annotated[str, typer.Argument(help="Query text.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Number of hits.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Search an index directory locally (no server) and print the ranked hits."""
    from retrieval.index import open_index

    try:
        hits = open_index(index).search(query, k)
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    if as_json:
        print(json.dumps({"query": query, "hits": [{"doc_id": d, "score": s} for d, s in hits]}))
        return
    table = Table("rank", "doc_id", "score", title=f"{query!r}")
    for rank, (doc, score) in enumerate(hits, 1):
        table.add_row(str(rank), doc, f"{score:.4f}")
    console.print(table)


def warn_other_corpus(index: Path, data: Path) -> None:
    """Warn when ``index`` records the checksum of the corpus it was built from and ``data``'s differs:
    its judged documents then need not be in the index, and count as misses."""
    from sparsekit.artifacts import open_artifact, sha256_file
    from sparsekit.errors import ArtifactError

    try:
        recorded = open_artifact(index, verify=False).source_checksums()
    except ArtifactError:  # an index folder without a manifest of ours records nothing to compare
        return
    corpus = data / "corpus.jsonl"
    if recorded and corpus.is_file() and sha256_file(corpus) not in recorded:
        err.print(f"[yellow]warning:[/] {escape(str(index))} was built from another corpus than "
                  f"{escape(str(corpus))} (its recorded checksum differs): judged documents it lacks count "
                  "as misses")


def eval_command(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    data: Annotated[Path, typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate (qrels/<split>.tsv).")] = "test",
    k: Annotated[int, typer.Option("-k", min=1, help="Hits retrieved per query (R@100 needs >= 100).")] = 100,
    threads: Annotated[int, typer.Option(min=1, help="Search threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object, not a table.")] = False,
) -> None:
    """Evaluate an index on a BEIR split: NDCG@10, Recall@100, MRR@10 (pytrec_eval) and queries/s (one
    batch after a one-query warm-up)."""
    from retrieval.evaluation import evaluate, judged_queries, run_from_hits
    from retrieval.index import open_index

    try:
        qrels, queries = judged_queries(data, split)
        ix = open_index(index)
        warn_other_corpus(index, data)
        qids = sorted(qrels)
        ix.batch_search([queries[qids[0]]], k, threads)  # warm-up: JIT, thread pool, JVM; not timed
        start = time.perf_counter()
        hits = ix.batch_search([queries[q] for q in qids], k, threads)
        seconds = time.perf_counter() - start
        result = evaluate(qrels, run_from_hits(qids, hits))
    except (SparsekitError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    summary = {"index": str(index), "kind": ix.kind, "data": str(data), "split": split,
               "num_queries": result.num_queries, **result.means, "qps": len(qids) / seconds}
    if as_json:
        print(json.dumps(summary))
        return
    table = Table("metric", "value", title=f"{ix.kind} on {data.name}/{split} ({len(qids)} queries)")
    for name in ("ndcg@10", "recall@100", "mrr@10", "qps"):
        table.add_row(name, f"{summary[name]:.4f}")
    console.print(table)
