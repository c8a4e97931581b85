"""The ``sparsekit`` command line: build indexes, search, evaluate, serve.

Every command documents itself (``sparsekit COMMAND --help``). Long work shows progress bars.
Errors in user input exit with status 2 and a one-line message naming the file/line or field.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from services.commands import bench, cf, ctr, gcn, rag
from services.commands.output import above, console
from services.commands.output import fail as _fail
from sparsekit.atomic import exit_on_sigterm
from sparsekit.errors import InputError, SparsekitError

app = typer.Typer(
    help="Sparsekit: sparse retrieval and recommendation embeddings. "
         "Build indexes, search them, evaluate on BEIR data and serve them over gRPC.",
    no_args_is_help=True,
    add_completion=False,
)


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
        first = opts["first_stage"]
        params = {"threads": opts["threads"]} if first == "bm25" else (
            {"model": opts["model"]} if first == "sparse" else None)
        return {**common, "first_stage": first, "first_stage_params": params, "fusion": opts["fusion"],
                "alpha": opts["alpha"], "depth": opts["depth"]}
    from retrieval.index import KINDS

    raise ValueError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")


@app.command()
def index(
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl, or a BEIR folder holding one.")],
    out: Annotated[Path, typer.Option(help="Index directory to create (written atomically).")],
    kind: Annotated[str, typer.Option(help="bm25 (Lucene), sparse (learned; needs --model), dense (faiss), "
                                           "bigranular (PQ codes in RAM + vectors on disk) or hybrid "
                                           "(first stage + dense re-score + fusion).")] = "bm25",
    model: Annotated[Path | None, typer.Option(help="sparse (and hybrid over sparse): a model dir.")] = None,
    k1: Annotated[float, typer.Option(
        min=0, help="bm25: k1 (recorded in the manifest, used at search).")] = 0.9,
    b: Annotated[float, typer.Option(min=0, max=1, help="bm25: b.")] = 0.4,
    threads: Annotated[int, typer.Option(min=1, help="bm25: indexing threads.")] = 2,
    quantization: Annotated[str, typer.Option(help="sparse: uint8, uint16 or none.")] = "uint8",
    top_k: Annotated[int | None, typer.Option(
        min=1, help="sparse: keep each document's top-k terms.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="sparse/dense: encoding batch size.")] = 32,
    factory: Annotated[str, typer.Option(help="dense: faiss factory string (Flat, HNSW32, "
                                              "IVF1024,PQ48).")] = "Flat",
    codes: Annotated[str, typer.Option(help="bigranular: the in-RAM codes (faiss factory).")] = "OPQ48,PQ48",
    candidates: Annotated[int, typer.Option(
        min=1, help="bigranular: candidates C re-scored from disk.")] = 1000,
    nprobe: Annotated[int, typer.Option(min=1, help="dense/bigranular IVF: lists probed.")] = 32,
    first_stage: Annotated[str, typer.Option(help="hybrid: bm25, sparse or an index directory.")] = "bm25",
    fusion: Annotated[str, typer.Option(help="hybrid: rrf or linear (min-max normalised).")] = "linear",
    alpha: Annotated[float, typer.Option(
        min=0, max=1, help="hybrid linear: weight of the dense score.")] = 0.65,
    depth: Annotated[int, typer.Option(min=1, help="hybrid: first-stage candidates re-scored.")] = 1000,
    cache_dir: Annotated[Path | None, typer.Option(help="dense kinds: corpus-embedding cache.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index at OUT.")] = False,
) -> None:
    """Build an index over a corpus. The directory appears only when the build has finished."""
    from retrieval.index import build_index

    start = time.perf_counter()
    opts = {"model": model, "k1": k1, "b": b, "threads": threads, "quantization": quantization,
            "top_k": top_k, "batch_size": batch_size, "factory": factory, "codes": codes,
            "candidates": candidates, "nprobe": nprobe, "first_stage": first_stage, "fusion": fusion,
            "alpha": alpha, "depth": depth, "cache_dir": cache_dir}
    try:
        params = _index_params(kind, opts)
        path = build_index(kind, corpus, out, overwrite=overwrite, **params)
    except (SparsekitError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"built {kind} index at {path} in {time.perf_counter() - start:.1f}s")


@app.command()
def search(
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
        _fail(exc)
    if as_json:
        print(json.dumps({"query": query, "hits": [{"doc_id": d, "score": s} for d, s in hits]}))
        return
    table = Table("rank", "doc_id", "score", title=f"{query!r}")
    for rank, (doc, score) in enumerate(hits, 1):
        table.add_row(str(rank), doc, f"{score:.4f}")
    console.print(table)


@app.command("eval")
def evaluate_cmd(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    data: Annotated[Path, typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate (qrels/<split>.tsv).")] = "test",
    k: Annotated[int, typer.Option("-k", min=1, help="Hits retrieved per query (R@100 needs >= 100).")] = 100,
    threads: Annotated[int, typer.Option(min=1, help="Search threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object, not a table.")] = False,
) -> None:
    """Evaluate an index on a BEIR split: NDCG@10, Recall@100, MRR@10 (pytrec_eval)."""
    from retrieval.data.beir import load_qrels, load_queries
    from retrieval.evaluation import evaluate, run_from_hits
    from retrieval.index import open_index

    try:
        qrels_path, queries_path = data / "qrels" / f"{split}.tsv", data / "queries.jsonl"
        qrels = load_qrels(qrels_path)
        if not qrels:
            raise InputError(qrels_path, "no judgements below the header: nothing to evaluate")
        queries = load_queries(queries_path)
        missing = sorted(set(qrels) - set(queries))
        if missing:
            raise InputError(queries_path, f"{len(missing)} queries judged in {qrels_path} are absent, e.g. "
                                           f"{missing[:3]}")
        ix = open_index(index)
        qids = sorted(qrels)
        start = time.perf_counter()
        hits = ix.batch_search([queries[q] for q in qids], k, threads)
        seconds = time.perf_counter() - start
        result = evaluate(qrels, run_from_hits(qids, hits))
    except (SparsekitError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    summary = {"index": str(index), "kind": ix.kind, "data": str(data), "split": split,
               "num_queries": result.num_queries, **result.means, "qps": len(qids) / seconds}
    if as_json:
        print(json.dumps(summary))
        return
    table = Table("metric", "value", title=f"{ix.kind} on {data.name}/{split} ({len(qids)} queries)")
    for name in ("ndcg@10", "recall@100", "mrr@10", "qps"):
        table.add_row(name, f"{summary[name]:.4f}")
    console.print(table)


def _named(specs: list[str], option: str) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--{option} {spec!r}: expected NAME=DIR")
        if name in out:
            raise ValueError(f"--{option} {spec!r}: the name {name!r} is given twice")
        out[name] = Path(path)
    return out


def _generate_servicer(rag_corpus: Path, policy: str, cache_dir: Path | None):
    from services.generate_service import GenerateServicer

    return GenerateServicer(rag.open_pipeline(rag_corpus, policy, cache_dir, host_mb=512, disk_mb=4096,
                                              gguf=None, k=5))


@app.command()
def serve(
    index: Annotated[list[str], typer.Option(
        help="NAME=DIR of an index to serve; repeat for several.")] = [],  # noqa: B006
    recommender: Annotated[list[str], typer.Option(help="NAME=DIR of a CF model or DSL sparse export "
                                                        "(RecommendService.Recommend).")] = [],  # noqa: B006
    ctr: Annotated[list[str], typer.Option(help="NAME=DIR of a CTR model, original or AFM-compressed "
                                                "(RecommendService.ScoreCTR).")] = [],  # noqa: B006
    rag_corpus: Annotated[Path | None, typer.Option("--rag", help="A RAG corpus (`sparsekit rag build`) to "
                                                                  "answer from (GenerateService).")] = None,
    rag_policy: Annotated[str, typer.Option(help=rag.POLICY_HELP)] = "cache-craft",
    rag_cache_dir: Annotated[Path | None, typer.Option(help="Disk tier of the chunk cache.")] = None,
    address: Annotated[str, typer.Option(help="host:port to bind.")] = "127.0.0.1:50051",
    workers: Annotated[int, typer.Option(min=1, help="gRPC worker threads.")] = 4,
) -> None:
    """Serve indexes and models over gRPC (SearchService, RecommendService, GenerateService, health,
    reflection) until SIGINT/SIGTERM."""
    from retrieval.index import open_index
    from services.recommend_service import RecommendServicer, load_ctr, load_recommender
    from services.search_service import ServerConfig, make_server

    try:
        if not (index or recommender or ctr or rag_corpus):
            raise ValueError("nothing to serve: pass --index, --recommender, --ctr and/or --rag")
        config = ServerConfig(address=address, workers=workers)  # a bad --address fails before any loading
        indexes = {name: open_index(path) for name, path in _named(index, "index").items()}
        recs = {name: load_recommender(path) for name, path in _named(recommender, "recommender").items()}
        ctrs = {name: load_ctr(path) for name, path in _named(ctr, "ctr").items()}
        recommend = RecommendServicer(recs, ctrs) if recs or ctrs else None
        generate = _generate_servicer(rag_corpus, rag_policy, rag_cache_dir) if rag_corpus else None
        server, port = make_server(indexes, config, recommend, generate)
    except (SparsekitError, ValueError, OSError) as exc:
        _fail(exc)
    server.start()
    host = address.rsplit(":", 1)[0]
    served = sorted(indexes) + sorted(recs) + sorted(ctrs) + ([f"rag:{rag_corpus}"] if rag_corpus else [])
    console.print(f"serving {served} on {host}:{port} (Ctrl-C to stop)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    console.print("stopped")


train_app = typer.Typer(help="Train models: sparse (learned sparse), cf, ctr, gcn.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("sparse")
def train_sparse(
    data: Annotated[Path, typer.Option(help="BEIR folder; trains on qrels/<split>.tsv.")],
    out: Annotated[Path, typer.Option(help="Model directory to write (sparse-doc-encoder artifact).")],
    work_dir: Annotated[Path | None, typer.Option(help="Caches + checkpoints (default OUT.work).")] = None,
    split: Annotated[str, typer.Option(help="Training qrels split.")] = "train",
    distill: Annotated[str, typer.Option(help="ensemble | dense | bm25 | none (contrastive).")] = "ensemble",
    idf_aware: Annotated[bool, typer.Option(help="IDF-aware matching (off: binary queries).")] = True,
    pseudo_queries: Annotated[str, typer.Option(help="none | titles (each document's title as an extra "
                                                     "training query, teacher-scored).")] = "none",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training queries.")] = 2,
    max_length: Annotated[int, typer.Option(min=1, help="Document tokens kept.")] = 256,
    freeze_layers: Annotated[int, typer.Option(min=0, help="Frozen lower transformer layers (cached).")] = 4,
    tie_head: Annotated[bool, typer.Option(help="Vocabulary head tied to the frozen word embeddings "
                                                 "(--no-tie-head: a trainable copy).")] = True,
    lexical_prior: Annotated[bool, typer.Option(help="Add BM25-saturated WordPiece term frequencies to "
                                                      "the learned document vector (residual learning).")]
    = False,
    lr: Annotated[float, typer.Option(callback=above(0), help="Learning rate of the trained layers.")] = 5e-5,
    flops_lambda: Annotated[float, typer.Option(min=0, help="FLOPS weight after warm-up.")] = 0.002,
    flops_warmup: Annotated[int, typer.Option(min=0, help="Steps of quadratic FLOPS warm-up.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    dev_eval_start: Annotated[bool, typer.Option(help="Dev metrics of the untrained model too.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Train the inference-free sparse document encoder (IDF-aware FLOPS + ensemble distillation).

    Resumes from the last checkpoint in WORK_DIR when run again with the same settings.
    """
    from retrieval.encoders.backbone import NUM_LAYERS
    from retrieval.encoders.sparse_doc import SparseEncoderConfig
    from retrieval.training.sparse import SparseTrainConfig, train_sparse_encoder

    if freeze_layers > NUM_LAYERS:  # checked now, not after the teachers have scored the training set
        _fail(ValueError(f"--freeze-layers {freeze_layers}: the MiniLM backbone has {NUM_LAYERS} layers"))

    if distill not in ("ensemble", "dense", "bm25", "none"):
        _fail(ValueError(f"--distill {distill!r}: expected ensemble, dense, bm25 or none"))
    if pseudo_queries not in ("none", "titles"):
        _fail(ValueError(f"--pseudo-queries {pseudo_queries!r}: expected none or titles"))
    cfg = SparseTrainConfig(
        data=str(data), out=str(out), work_dir=str(work_dir) if work_dir else None, split=split,
        encoder=SparseEncoderConfig(max_length=max_length, freeze_layers=freeze_layers, tie_head=tie_head,
                                     lexical_prior=lexical_prior),
        distill=distill, idf_aware=idf_aware, pseudo_queries=pseudo_queries,  # type: ignore[arg-type]
        epochs=epochs, lr=lr, flops_lambda=flops_lambda, flops_warmup=flops_warmup, seed=seed,
        max_steps=max_steps, dev_eval_start=dev_eval_start, overwrite=overwrite)
    _run_training(train_sparse_encoder, cfg, "model")


def _run_training(train: Callable[[Any], Path], cfg: Any, what: str) -> None:
    """Run ``train(cfg)``, turning bad input into a clear exit; print where the result went and how long."""
    start = time.perf_counter()
    try:
        path = train(cfg)
    except (SparsekitError, ValueError, FileExistsError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"trained {what} at {path} in {time.perf_counter() - start:.0f}s")


@train_app.command("query-table")
def train_query_table(
    model: Annotated[Path, typer.Option(help="A model trained by `sparsekit train sparse` (stage 1).")],
    out: Annotated[Path, typer.Option(help="Model directory to write: same document encoder, trained "
                                           "query table.")],
    work_dir: Annotated[Path | None, typer.Option(help="Stage-1 caches (default MODEL.work).")] = None,
    epochs: Annotated[int, typer.Option(
        min=1, help="Passes over the training queries per learning rate.")] = 4,
    lr: Annotated[list[float] | None, typer.Option(
        callback=above(0), help="Adam learning rate; repeat for a grid (default "
                                "0.01, 0.03, 0.1); best (lr, epoch) on dev kept.")]
    = None,
    ce_weight: Annotated[float, typer.Option(
        min=0, help="Weight of the positives' cross-entropy beside KD.")] = 1.0,
    l2: Annotated[float, typer.Option(
        min=0, help="Pull of the table towards its start (IDF after stage 1).")] = 0.0,
    learn_residual_scale: Annotated[bool, typer.Option(
        help="Also learn the weight of the learned document terms beside the lexical prior.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Train the inference-free query table on the model's frozen document vectors (stage 2).

    Reuses the stage-1 split, pseudo-queries and teacher cache; keeps the table (and, for encoders with a
    lexical prior, the residual weight) of the (learning rate, epoch) with the best dev NDCG@10 (stage 1's
    if none beats it).
    """
    from retrieval.training.query_table import QueryTableConfig
    from retrieval.training.query_table import train_query_table as train

    cfg = QueryTableConfig(model=str(model), out=str(out), work_dir=str(work_dir) if work_dir else None,
                           epochs=epochs, lrs=tuple(lr) if lr else QueryTableConfig.lrs, ce_weight=ce_weight,
                           l2=l2, learn_residual_scale=learn_residual_scale, seed=seed, overwrite=overwrite)
    _run_training(train, cfg, "query table")


train_app.command("gcn")(gcn.train_gcn_command)
train_app.command("cf")(cf.train_cf_command)
train_app.command("ctr")(ctr.train_ctr_command)

compress_app = typer.Typer(help="Compress trained models.", no_args_is_help=True)
app.add_typer(compress_app, name="compress")
compress_app.command("ctr")(ctr.compress_ctr_command)

bench_app = typer.Typer(help="Benchmark sweeps.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("embeddings")(bench.bench_embeddings_command)

generate_app = typer.Typer(help="Generate synthetic data for benchmarks.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
generate_app.command("graph")(gcn.generate_graph_command)

rag_app = typer.Typer(help="Retrieval-augmented generation with the Cache-Craft chunk cache.",
                      no_args_is_help=True)
app.add_typer(rag_app, name="rag")
rag_app.command("build")(rag.build_command)
rag_app.command("ask")(rag.ask_command)


@app.command()
def demo() -> None:
    """Run the end-to-end demo (index -> gRPC server -> queries -> evaluation), as `make demo` does."""
    from services.demo import main

    sys.exit(main())


def main() -> None:
    """The ``sparsekit`` console script: ``kill`` (SIGTERM) unwinds like Ctrl-C, so an interrupted write
    removes its temporary files, then the typer app runs."""
    exit_on_sigterm()
    app()


if __name__ == "__main__":
    main()
