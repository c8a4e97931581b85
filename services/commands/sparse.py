"""CLI for inference-free learned sparse retrieval: ``sparsekit train sparse`` (stage 1, the document
encoder) and ``sparsekit train query-table`` (stage 2, the query table on frozen document vectors).

Python API: :func:`retrieval.training.sparse.train_sparse_encoder`,
:func:`retrieval.training.query_table.train_query_table`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from services.commands.output import (
    above,
    console,
    fail,
    naming_options,
    refuse_input_as_output,
    refuse_inside_artifact,
)
from sparsekit.errors import SparsekitError

# MiniLM-L6's layers: retrieval.encoders.backbone.NUM_LAYERS, whose package imports torch, too slow for
# every CLI start (a test checks the two agree)
BACKBONE_LAYERS = 6

# config fields -> the options that set them, for errors raised by the training configs
SPARSE_OPTIONS = {name: f"--{name.replace('_', '-')}" for name in (
    "split", "distill", "idf_aware", "pseudo_queries", "epochs", "queries_per_step", "dev_fraction", "lr",
    "flops_lambda", "flops_warmup", "seed", "max_steps", "max_length", "freeze_layers")} | {
    "encoder.max_length": "--max-length", "encoder.freeze_layers": "--freeze-layers", "lrs": "--lr",
    "ce_weight": "--ce-weight", "l2": "--l2"}


def train_sparse_command(
    data: Annotated[Path, typer.Option(help="BEIR folder; trains on qrels/<split>.tsv.")],
    out: Annotated[Path, typer.Option(help="Model directory to write (sparse-doc-encoder artifact).")],
    work_dir: Annotated[Path | None, typer.Option(help="Caches + checkpoints (default OUT.work).")] = None,
    split: Annotated[str, typer.Option(help="Training qrels split.")] = "train",
    distill: Annotated[str, typer.Option(help="ensemble | dense | bm25 | none (contrastive).")] = "ensemble",
    idf_aware: Annotated[bool, typer.Option(help="IDF-aware matching (off: binary queries).")] = True,
    pseudo_queries: Annotated[str, typer.Option(help="none | titles (each document's title as an extra "
                                                     "training query, teacher-scored).")] = "none",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training queries.")] = 2,
    queries_per_step: Annotated[int, typer.Option(min=1, help="Training queries per optimizer step.")] = 8,
    dev_fraction: Annotated[float, typer.Option(
        min=0, max=0.99, help="Share of the judged queries held out as dev (per-epoch metrics; the "
                              "query-table stage selects on it).")] = 0.1,
    max_length: Annotated[int, typer.Option(min=1, max=512, help="Document tokens kept (MiniLM has 512 "
                                                                "positions).")] = 256,
    freeze_layers: Annotated[int, typer.Option(
        min=1, max=BACKBONE_LAYERS, help="Frozen lower transformer layers (cached; the embeddings are frozen "
                                    "with them).")] = 4,
    tie_head: Annotated[bool, typer.Option(help="Vocabulary head tied to the frozen word embeddings "
                                                 "(--no-tie-head: a trainable copy).")] = True,
    lexical_prior: Annotated[bool, typer.Option(help="Add BM25-saturated WordPiece term frequencies to "
                                                      "the learned document vector (residual learning).")]
    = False,
    lr: Annotated[float, typer.Option(callback=above(0),
                                      help="Learning rate of the trained layers (> 0).")] = 5e-5,
    flops_lambda: Annotated[float, typer.Option(min=0, help="FLOPS weight after warm-up.")] = 0.002,
    flops_warmup: Annotated[int, typer.Option(min=0, help="Steps of quadratic FLOPS warm-up.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    max_steps: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many optimizer steps (omitted: run all --epochs).")] = None,
    dev_eval_start: Annotated[bool, typer.Option(help="Dev metrics of the untrained model too.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Train the inference-free sparse document encoder (IDF-aware FLOPS + ensemble distillation).

    Resumes from the last checkpoint in WORK_DIR when run again with the same settings.
    """
    from retrieval.encoders.sparse_doc import SparseEncoderConfig
    from retrieval.training.sparse import SparseTrainConfig, train_sparse_encoder

    refuse_inside_artifact(work_dir, "--work-dir")
    try:  # the config checks every setting; its errors name the option (--distill), not the field
        with naming_options(SPARSE_OPTIONS, only_renamed=True):
            encoder = SparseEncoderConfig(max_length=max_length, freeze_layers=freeze_layers,
                                          tie_head=tie_head, lexical_prior=lexical_prior)
            cfg = SparseTrainConfig(
                data=str(data), out=str(out), work_dir=str(work_dir) if work_dir else None, split=split,
                encoder=encoder, distill=distill, idf_aware=idf_aware,  # type: ignore[arg-type]
                pseudo_queries=pseudo_queries,  # type: ignore[arg-type]
                epochs=epochs, queries_per_step=queries_per_step, dev_fraction=dev_fraction, lr=lr,
                flops_lambda=flops_lambda, flops_warmup=flops_warmup, seed=seed,
                max_steps=max_steps, dev_eval_start=dev_eval_start, overwrite=overwrite)
    except SparsekitError as exc:
        fail(exc)
    _run_training(train_sparse_encoder, cfg, "model")


def _run_training(train: Callable[[Any], Path], cfg: Any, what: str) -> None:
    """Run ``train(cfg)``, turning bad input into a clear exit; print where the result went and how long."""
    start = time.perf_counter()
    try:
        path = train(cfg)
    except (SparsekitError, ValueError, OSError) as exc:  # OSError: a path that is a file, or unwritable
        fail(exc)
    console.print(f"trained {what} at {path} in {time.perf_counter() - start:.0f}s")


def train_query_table_command(
    model: Annotated[Path, typer.Option(help="A model trained by `sparsekit train sparse` (stage 1).")],
    out: Annotated[Path, typer.Option(help="Model directory to write: same document encoder, trained "
                                           "query table.")],
    work_dir: Annotated[Path | None, typer.Option(help="Stage-1 caches (default: the work dir stage 1 "
                                                             "recorded, else MODEL.work).")] = None,
    epochs: Annotated[int, typer.Option(
        min=1, help="Passes over the training queries per learning rate.")] = 4,
    lr: Annotated[list[float] | None, typer.Option(
        callback=above(0), help="Adam learning rate (> 0); repeat for a grid (default "
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

    refuse_input_as_output(out, model=model)
    refuse_inside_artifact(work_dir, "--work-dir")
    try:
        with naming_options(SPARSE_OPTIONS, only_renamed=True):
            cfg = QueryTableConfig(
                model=str(model), out=str(out), work_dir=str(work_dir) if work_dir else None, epochs=epochs,
                lrs=tuple(lr) if lr else QueryTableConfig.lrs, ce_weight=ce_weight, l2=l2,
                learn_residual_scale=learn_residual_scale, seed=seed, overwrite=overwrite)
    except SparsekitError as exc:
        fail(exc)
    _run_training(train, cfg, "query table")
