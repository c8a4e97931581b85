"""CLI for sampled GCN training (``sparsekit train gcn``) and synthetic graphs (``sparsekit generate graph``).

Python API: :func:`recsys.gcn.training.train_gcn` on a task from :mod:`recsys.gcn.tasks`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from services.commands.output import above, console, fail, naming_options
from sparsekit.artifacts import check_outside_artifacts
from sparsekit.atomic import check_file_target, write_text_atomic
from sparsekit.errors import SparsekitError


def _fanouts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        fail(ValueError(f"--fanouts {text!r}: expected comma-separated integers such as 10,5"))


def train_gcn_command(
    data: Annotated[Path, typer.Option(help="A Planetoid root holding <name>/raw/ (e.g. ../shared/data/"
                                            "planetoid), a graph from `sparsekit generate graph`, or your "
                                            "own graph as .npz (x, edge_index, y[, *_mask]).")],
    name: Annotated[str, typer.Option(help="Planetoid graph name (Cora, CiteSeer, PubMed).")] = "Cora",
    model: Annotated[str, typer.Option(help="sage (GraphSAGE-mean) or gcn.")] = "sage",
    fanouts: Annotated[str, typer.Option(help="Neighbours sampled per hop, e.g. 10,5 (-1: all).")] = "10,5",
    feature_store: Annotated[str, typer.Option(help="zero-copy (GPU reads pinned host memory), cpu-copy "
                                                    "(CPU gather, then copy) or device (table on GPU). On "
                                                    "CPU all three gather with index_select.")] = "zero-copy",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Seed nodes per mini-batch.")] = 64,
    hidden: Annotated[int, typer.Option(min=1, help="Hidden channels.")] = 128,
    lr: Annotated[float, typer.Option(callback=above(0), help="Adam learning rate (> 0).")] = 0.01,
    max_batches: Annotated[int | None, typer.Option(
        min=1, help="Cap on batches per epoch (omitted: every training node each epoch).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    evaluate: Annotated[bool, typer.Option(help="Validation accuracy after each epoch and test accuracy at "
                                                "the end, each node from its full neighbourhood "
                                                "(--no-evaluate: timing runs on large graphs).")] = True,
    report: Annotated[Path | None, typer.Option(help="Write the history and accuracies as JSON.")] = None,
) -> None:
    """Train a GCN on sampled mini-batches; print each epoch's sample / gather / transfer / compute time."""
    from recsys.gcn.tasks import load_task
    from recsys.gcn.training import PHASES, GCNTrainConfig, train_gcn

    try:
        if report is not None:
            check_file_target(report, "--report")  # now, not after training
            check_outside_artifacts(report, "--report")
        with naming_options():  # "--feature-store: unknown mode", not the Python field "feature_store"
            config = GCNTrainConfig(model=model, fanouts=_fanouts(fanouts), feature_store=feature_store,
                                    epochs=epochs, batch_size=batch_size, hidden=hidden, lr=lr,
                                    max_batches=max_batches, device=device, seed=seed, evaluate=evaluate)
        task = load_task(data, mode=feature_store, device=device, name=name)
        result = train_gcn(config, task)
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    table = Table("epoch", "loss", *(f"{p} s" for p in PHASES), "seeds/s", "val acc")
    for h in result.history:
        val = "-" if h.val_acc is None else f"{h.val_acc:.4f}"
        table.add_row(str(h.epoch), f"{h.loss:.4f}", *(f"{h.seconds[p]:.3f}" for p in PHASES),
                      f"{h.seeds_per_s:.0f}", val)
    console.print(table)
    if result.test_acc is not None:
        console.print(f"best epoch {result.best_epoch}: val acc {result.val_acc:.4f}, "
                      f"test acc {result.test_acc:.4f} (feature store: {task.features.mode})")
    elif evaluate:
        splits = (("val", task.val_idx), ("test", task.test_idx))
        empty = " and ".join(name for name, ids in splits if not ids.numel())
        kept = (f"best epoch {result.best_epoch}: val acc {result.val_acc:.4f}" if result.val_acc is not None
                else "the last epoch's model is kept")
        console.print(f"[yellow]not evaluated on an empty {empty} split[/] (too few labelled nodes for the "
                      f"split fractions?); {kept}", markup=True)
    if report is not None:
        try:
            write_text_atomic(report, json.dumps(result.summary(), indent=2) + "\n")
        except OSError as exc:
            fail(exc)
        console.print(f"report written to {report}")


def generate_graph_command(
    out: Annotated[Path, typer.Option(help="Directory to create (written atomically).")],
    nodes: Annotated[int, typer.Option(min=1, help="Number of nodes.")] = 2_000_000,
    edges: Annotated[int, typer.Option(min=1, help="Number of directed edges.")] = 20_000_000,
    dim: Annotated[int, typer.Option(min=1, help="Feature width (float32, written to a memmap).")] = 256,
    classes: Annotated[int, typer.Option(min=2, help="Planted classes.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing graph at OUT.")] = False,
) -> None:
    """Generate a power-law graph with planted classes and on-disk features (for `train gcn` at scale)."""
    from recsys.gcn.synthetic import generate_graph

    start = time.perf_counter()
    try:
        g = generate_graph(out, nodes, edges, dim, num_classes=classes, seed=seed, overwrite=overwrite)
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    console.print(f"graph at {g.path}: {g.num_nodes:,} nodes, {g.num_edges:,} edges, {g.feature_dim}-d "
                  f"features in {time.perf_counter() - start:.0f}s")
