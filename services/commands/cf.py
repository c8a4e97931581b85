"""CLI for collaborative filtering: ``sparsekit train cf`` (dense, DSL dynamic sparse or static sparse).

Python API: :func:`recsys.training.cf.train_cf`; sparse export: :func:`recsys.sparse_export.export_sparse`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from services.commands.output import above, console, fail, naming_options, refuse_existing
from sparsekit.errors import InputError, SparsekitError

# CFTrainConfig fields set from differently named options
OPTIONS = {"static_sparsity": "--static", "dsl_delta_t": "--delta-t", "checkpoint_dir": "--checkpoint-dir",
           "time_budget_s": "--time-budget-s", "batch_size": "--batch-size"}


def refuse_checkpoint_in_out(checkpoint_dir: Path | None, out: Path) -> None:
    """Fail before training when the checkpoint folder and ``out`` nest: a checkpoint written inside
    ``out`` makes it a folder that ``save_model`` refuses to replace after the last epoch (and one that
    ``--overwrite`` would delete with the checkpoint), and ``out`` inside the checkpoint artifact clashes
    with it the same way."""
    if checkpoint_dir is None:
        return
    from recsys.training.checkpoint_folder import checkpoint_artifact

    ckpt, target = checkpoint_dir.resolve(), out.resolve()
    artifact = checkpoint_artifact(ckpt)
    if ckpt == target or target in ckpt.parents or artifact == target or artifact in target.parents:
        fail(InputError("--checkpoint-dir", f"{checkpoint_dir} and --out {out} overlap: the model could not "
                                            "be saved at the end of training; keep checkpoints in a folder "
                                            "beside --out"))


def train_cf_command(
    data: Annotated[Path, typer.Option(help="A LightGCN-style folder with train.txt / test.txt "
                                            "(e.g. ../shared/data/gowalla-lightgcn), or an interaction "
                                            "log: a CSV / TSV / Parquet table of user, item (and time) "
                                            "columns, split per user.")],
    out: Annotated[Path, typer.Option(help="Model directory: a cf-model, or with --density a cf-sparse "
                                           "export (CSR tables; the stored bytes are real).")],
    model: Annotated[str, typer.Option(help="mf (MF-BPR), lightgcn or neumf.")] = "lightgcn",
    density: Annotated[float | None, typer.Option(help="DSL: train sparse at this density, in (0, 1] "
                                                       "(e.g. 0.2); default dense.")] = None,
    static: Annotated[bool, typer.Option(help="With --density: a fixed random mask (no regrowth).")] = False,
    dim: Annotated[int, typer.Option(min=1, help="Embedding width.")] = 64,
    layers: Annotated[int, typer.Option(min=0, help="LightGCN propagation layers / NeuMF MLP layers.")] = 3,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs over the training interactions.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="BPR triples per step.")] = 8192,
    lr: Annotated[float, typer.Option(callback=above(0), help="Adam learning rate (> 0).")] = 5e-3,
    delta_t: Annotated[int, typer.Option(min=1, help="DSL: steps between prune-and-regrow updates.")] = 100,
    time_budget_s: Annotated[float | None, typer.Option(
        callback=above(0), help="Stop after this many seconds of training (> 0; default: no limit).")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoint every epoch here (default: no "
                                                             "checkpoints).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from --checkpoint-dir.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 2020,
    user_col: Annotated[str, typer.Option(help="Interaction logs: the user id column.")] = "user",
    item_col: Annotated[str, typer.Option(help="Interaction logs: the item id column.")] = "item",
    time_col: Annotated[str | None, typer.Option(help="Interaction logs: a timestamp column; each user's "
                                                      "latest items go to test (else a seeded random "
                                                      "choice).")] = None,
    test_fraction: Annotated[float, typer.Option(
        callback=above(0), max=0.99, help="Interaction logs: each user's share of items held "
                                          "out for test, in (0, 0.99].")] = 0.2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Train a CF model with BPR; report Recall@20 / NDCG@20 on the test split (train items excluded)."""
    from recsys.data.implicit import load_implicit
    from recsys.data.interactions_table import InteractionsConfig, load_interactions_table
    from recsys.data.table_file import is_table_file
    from recsys.id_vocab import IdVocab
    from recsys.ranking import evaluate_ranking
    from recsys.sparse_export import export_sparse
    from recsys.training.cf import CFTrainConfig, save_model, train_cf

    refuse_existing(out, overwrite)
    refuse_checkpoint_in_out(checkpoint_dir, out)
    start = time.perf_counter()
    try:
        with naming_options(OPTIONS):  # before the data loads: a bad --model or --static fails at once
            config = CFTrainConfig(model=model, dim=dim, layers=layers, lr=lr, batch_size=batch_size,
                                   epochs=epochs, seed=seed, density=density, static_sparsity=static,
                                   dsl_delta_t=delta_t, time_budget_s=time_budget_s, resume=resume,
                                   checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None)
        if is_table_file(data):
            log = InteractionsConfig(user=user_col, item=item_col, time=time_col, test_fraction=test_fraction)
            dataset = load_interactions_table(data, log, seed=seed)
        else:
            dataset = load_implicit(data)
        k = min(20, dataset.num_items)  # a small log may have fewer items than the usual cut-off
        config = replace(config, eval_k=k)
        trained, history = train_cf(config, dataset)
        metrics = evaluate_ranking(trained.scorer(), dataset.train, dataset.test, k=k, device=trained.device)
        if density is None:
            save_model(trained, out, overwrite=overwrite, ids=IdVocab.of(dataset))
            stored = ""
        else:
            counts = export_sparse(trained, out, overwrite=overwrite, ids=IdVocab.of(dataset)).counts
            stored = f", stored {counts['stored_bytes']:,} B vs dense {counts['dense_bytes']:,} B"
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    quality = (f"Recall@{k} {metrics.recall:.4f}, NDCG@{k} {metrics.ndcg:.4f}" if metrics.users else
               "not evaluated: no user has a test item (--test-fraction rounds to 0 for users with few "
               "items)")
    console.print(f"{model} ({'dense' if density is None else f'density {density}'}): "
                  f"{len(history)} epochs in {time.perf_counter() - start:.0f}s, {quality}{stored}; "
                  f"saved to {out}")
