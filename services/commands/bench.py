"""CLI for benchmark sweeps: ``sparsekit bench embeddings`` (the embedding compression budget sweep).

Python API: :func:`embeddings.sweep.run_sweep` and :func:`embeddings.sweep.write_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.commands.ctr import (
    DATA_HELP,
    FieldsOption,
    HeaderOption,
    LabelOption,
    MinCountOption,
    NumericOption,
    table_config,
)
from services.commands.output import above, console, fail, naming_options, refuse_inside_artifact
from sparsekit.errors import InputError, SparsekitError


def _split(text: str, cast: type, option: str) -> tuple:
    try:
        return tuple(cast(part) for part in text.split(",") if part)
    except ValueError:
        fail(ValueError(f"--{option} {text!r}: expected a comma-separated list"))


def bench_embeddings_command(
    dataset: Annotated[str, typer.Option(help=DATA_HELP)] = "frappe",
    model: Annotated[str, typer.Option(help="CTR model(s): dlrm, wdl, deepfm, dcnv2.")] = "dcnv2",
    methods: Annotated[str, typer.Option(help="Methods, comma-separated (default: every published "
                                              "method, embeddings.registry.METHODS; compositions such "
                                              "as qr+int4 run when named).")] = "",
    budgets: Annotated[str, typer.Option(help="Budgets (share of the full table).")] = "0.5,0.1,0.01,0.001",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
    out: Annotated[Path, typer.Option(help="Sweep folder: a JSON per run (resumable), report/.")] = Path(
        "runs/embedding-sweep"),
    max_epochs: Annotated[int, typer.Option(
        min=1, help="Epoch cap (early stopping on validation AUC).")] = 30,
    min_epochs: Annotated[int, typer.Option(min=1, help="Never stop early before this epoch.")] = 1,
    first_order: Annotated[str, typer.Option(help="DeepFM / WDL's dim-1 first-order table: 'free' (outside "
                                                  "the budget, as PEP / OptEmbed count), 'counted' (its "
                                                  "bytes come out of the budget) or 'projected' (compressed "
                                                  "models project it from their embeddings, one vector per "
                                                  "field, counted).")] = "free",
    lr: Annotated[float, typer.Option(callback=above(0),
                                      help="Adam learning rate of every run (> 0).")] = 1e-2,
    embedding_l2: Annotated[float, typer.Option(
        min=0, help="L2 on the embedding rows each batch reads.")] = 1e-2,
    workers: Annotated[int, typer.Option(
        min=1, help="Runs trained at once, one process each (one torch thread per run).")] = 1,
    label: LabelOption = "label",
    fields: FieldsOption = "",
    numeric: NumericOption = "",
    min_count: MinCountOption = 1,
    header: HeaderOption = True,
) -> None:
    """Train every method x budget x seed; write a tidy table (CSV, Markdown), AUC-vs-budget plots and a
    "which method at which budget" recommendation. Resumable: finished runs are skipped."""
    from embeddings.registry import METHODS
    from embeddings.sweep import SweepConfig, run_sweep, write_report

    refuse_inside_artifact(out, "--out")
    try:
        with naming_options({"models": "--model", "out_dir": "--out"}):  # options, not Python fields
            table = table_config(label, numeric, min_count, fields, header)
            config = SweepConfig(dataset=dataset, table=table, models=_split(model, str, "model"),
                                 methods=_split(methods, str, "methods") or tuple(METHODS),
                                 budgets=_split(budgets, float, "budgets"), seeds=_split(seeds, int, "seeds"),
                                 out_dir=str(out), max_epochs=max_epochs, min_epochs=min_epochs,
                                 first_order=first_order, lr=lr, embedding_l2=embedding_l2, workers=workers)
            if config.table is not None and not Path(dataset).is_file():  # before the folder is claimed
                raise InputError("dataset", f"no such table file: {dataset}")
        paths = write_report(run_sweep(config), out / "report")
    except (SparsekitError, ValueError, OSError) as exc:  # OSError: --out under a file
        fail(exc)
    console.print(f"report: {paths['md']} (plot {paths['png']})")
