"""CLI for CTR models: ``sparsekit train ctr`` and AFM low-rank compression (``sparsekit compress ctr``).

Python API: :func:`recsys.training.ctr.train_ctr`, :func:`recsys.lowrank.compress`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from services.commands.output import (
    above,
    console,
    fail,
    naming_options,
    refuse_existing,
    refuse_input_as_output,
)
from sparsekit.errors import InputError, SparsekitError

if TYPE_CHECKING:
    from recsys.data.ctr_table import TableCTRConfig
    from recsys.training.ctr import CTRTrainConfig

DATA_HELP = ("frappe, movielens (CTR: rating >= 4 is a click), or a CSV / TSV / Parquet table of your own "
             "(a 0/1 label column plus feature columns; vocabularies from its train split, OOV ids).")
LabelOption = Annotated[str, typer.Option(help="Table files: the 0/1 label column.")]
NumericOption = Annotated[str, typer.Option(help="Table files: numeric columns, comma-separated (bucketed "
                                                 "at train quantiles).")]
MinCountOption = Annotated[int, typer.Option(min=1, help="Table files: values seen fewer times in train "
                                                         "share the field's OOV id (>= 1).")]
FieldsOption = Annotated[str, typer.Option(help="Table files: the feature columns, comma-separated "
                                                "(default: every column but the label).")]
HeaderOption = Annotated[bool, typer.Option(help="Table files: the first line names the columns (without "
                                                 "it they are column_1, column_2, ...).")]


def _names(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def table_config(label: str, numeric: str = "", min_count: int = 1, fields: str = "",
                 header: bool = True) -> TableCTRConfig:
    """The table-reading options of the CTR commands as one ``recsys.data.ctr_table.TableCTRConfig``."""
    from recsys.data.ctr_table import TableCTRConfig

    return TableCTRConfig(label=label, fields=_names(fields), numeric=_names(numeric), min_count=min_count,
                          header=header)


def split_seed(params: dict[str, Any], seed: int | None) -> int:
    """The split seed of the model's training run (recorded in its manifest), which ``seed`` must equal
    when given: another seed calibrates on the model's validation / test rows and reports AUCs on a split
    that holds its training rows."""
    trained = (params.get("config") or {}).get("seed")
    if seed is None:
        return 0 if trained is None else int(trained)
    if trained is not None and seed != trained:
        raise InputError("--seed", f"{seed} is not the seed the model was trained with ({trained}): its "
                                   "split would mix the model's training rows into val / test; leave --seed "
                                   "out")
    return seed


def trained_config(params: dict[str, Any]) -> CTRTrainConfig | None:
    """The training config a model's manifest records (kept by its compressed version, so a compressed
    model still knows its split seed); fields this version does not know are dropped."""
    from recsys.training.ctr import CTRTrainConfig

    recorded = params.get("config")
    if not isinstance(recorded, dict):
        return None
    known = {f.name for f in fields(CTRTrainConfig)}
    try:
        return CTRTrainConfig(**{k: tuple(v) if isinstance(v, list) else v  # JSON made tuples lists
                                 for k, v in recorded.items() if k in known})
    except InputError:  # recorded by a version with other rules: the manifest keeps no config
        return None


def train_ctr_command(
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    out: Annotated[Path, typer.Option(help="Model directory to write (ctr-model artifact).")],
    model: Annotated[str, typer.Option(help="dlrm, wdl, deepfm or dcnv2.")] = "deepfm",
    data_root: Annotated[Path | None, typer.Option(help="Dataset folder (default: the data root).")] = None,
    embed_dim: Annotated[int, typer.Option(min=1, help="Embedding width.")] = 16,
    lr: Annotated[float, typer.Option(callback=above(0), help="Adam learning rate (> 0).")] = 1e-2,
    max_epochs: Annotated[int, typer.Option(
        min=1, help="Epoch cap (early stopping on validation AUC).")] = 30,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without validation gain before stopping.")] = 2,
    min_epochs: Annotated[int, typer.Option(min=1, help="Never stop early before this epoch.")] = 1,
    seed: Annotated[int, typer.Option(help="Split and initialisation seed.")] = 0,
    threads: Annotated[int, typer.Option(
        min=1, help="torch threads (1 avoids thrashing on busy machines).")] = 1,
    label: LabelOption = "label",
    fields: FieldsOption = "",
    numeric: NumericOption = "",
    min_count: MinCountOption = 1,
    header: HeaderOption = True,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoint every epoch here (default: no "
                                                             "checkpoints).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from --checkpoint-dir.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Train a CTR model with early stopping on validation AUC; save it with its field schema."""
    from recsys.data.ctr import data_identity, load_ctr
    from recsys.data.table_file import is_table_file
    from recsys.training.ctr import CTRTrainConfig, save_ctr_model, train_ctr
    from services.commands.cf import refuse_checkpoint_in_out

    refuse_existing(out, overwrite)
    refuse_checkpoint_in_out(checkpoint_dir, out)
    try:
        with naming_options():  # before the data loads
            config = CTRTrainConfig(model=model, embed_dim=embed_dim, lr=lr, max_epochs=max_epochs,
                                    patience=patience, min_epochs=min_epochs, seed=seed, threads=threads,
                                    checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                                    resume=resume)
        table = table_config(label, numeric, min_count, fields, header)
        dataset = load_ctr(data, data_root, seed, table=table)
        trained_on = data_identity(data)  # now: a table rotated away during training cannot lose the model
        result = train_ctr(config, dataset)
        save_ctr_model(result.model, out, schema=dataset.schema, config=config, metrics=result.metrics,
                       table=table if is_table_file(data) else None, data=trained_on, overwrite=overwrite)
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    m = result.metrics
    console.print(f"{model} on {data}: best epoch {result.best_epoch}, val AUC {m['val_auc']:.4f}, "
                  f"test AUC {m['test_auc']:.4f}, logloss {m['test_logloss']:.4f}; saved to {out}")


def compress_ctr_command(
    model: Annotated[Path, typer.Option(help="A trained ctr-model directory (from `train ctr`).")],
    calib: Annotated[str, typer.Option(help="Calibration data, as --data of `train ctr` (its train "
                                            "split; a table is encoded with the model's vocabularies).")],
    out: Annotated[Path, typer.Option(help="Compressed model directory to write.")],
    rank: Annotated[int | None, typer.Option(
        min=1, help="Keep the top-k eigenvectors of every layer.")] = None,
    energy: Annotated[float | None, typer.Option(
        callback=above(0), max=1, help="Or: the smallest rank explaining this share of "
                                       "variance, in (0, 1] (e.g. 0.99).")] = None,
    embedding: Annotated[bool, typer.Option(help="Also compress the embedding table.")] = False,
    calib_rows: Annotated[int, typer.Option(min=1, help="Training rows in the calibration pass.")] = 20000,
    data_root: Annotated[Path | None, typer.Option(help="Dataset folder (default: the data root).")] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: the one the model was trained "
                                                  "with; another is refused).")] = None,
    label: Annotated[str | None, typer.Option(help="Table files: the 0/1 label column (default: the one "
                                                   "the model was trained with).")] = None,
    header: Annotated[bool | None, typer.Option(help="Table files: the first line names the columns "
                                                     "(default: as when the model was trained).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at OUT.")] = False,
) -> None:
    """Atomic Feature Mimicking: one calibration pass, top-k eigenvectors per layer, no retraining."""
    from recsys.data.ctr import data_identity, load_ctr, same_data
    from recsys.data.table_file import is_table_file
    from recsys.lowrank import affected_layers, compress, default_targets, parameter_count
    from recsys.training.ctr import batches, evaluate_ctr, load_ctr_model, save_ctr_model

    if (rank is None) == (energy is None):
        fail(ValueError("pass exactly one of --rank and --energy"))
    refuse_input_as_output(out, model=model)
    refuse_existing(out, overwrite)
    try:
        art = load_ctr_model(model)
        seed = split_seed(art.params, seed)
        read = art.params.get("data_table") or {}  # how a table of the user's own was read in training
        table = table_config(label or read.get("label", "label"),
                             header=read.get("header", True) if header is None else header)
        dataset = load_ctr(calib, data_root, seed, table=table, schema=art.schema)
        trained_on = art.params.get("data")  # None for models saved before it was recorded
        other_data = trained_on is not None and not same_data(trained_on, data_identity(calib))
        targets = default_targets(art.model) + (["embedding"] if embedding else [])
        rows = np.random.default_rng(seed).permutation(len(dataset.train))[:calib_rows]
        small = compress(art.model, batches(dataset.train.features[rows], 4096), rank=rank, energy=energy,
                         targets=targets)
        save_ctr_model(small, out, schema=art.schema, config=trained_config(art.params), metrics={},
                       table=table if is_table_file(calib) else None, data=trained_on, overwrite=overwrite)
    except (SparsekitError, ValueError) as exc:
        fail(exc)
    if other_data:
        name = trained_on.get("dataset") or trained_on.get("table")
        console.print(f"[yellow]warning:[/] {escape(calib)} is not the data {escape(str(model))} was "
                      f"trained on ({escape(str(name))}): the val / test AUCs below are on its split, not "
                      "the model's held-out rows", markup=True)
    layers = affected_layers(small.lowrank_spec)
    table = Table("model", "params (affected layers)", "val AUC", "test AUC", title=f"AFM on {calib}")
    for name, m in (("original", art.model), ("compressed", small)):
        auc = {split: evaluate_ctr(m, getattr(dataset, split))["auc"] for split in ("val", "test")}
        table.add_row(name, f"{parameter_count(m, layers):,}", f"{auc['val']:.4f}", f"{auc['test']:.4f}")
    console.print(table)
    before, after = parameter_count(art.model, layers), parameter_count(small, layers)
    if after >= before:
        console.print(f"[yellow]note:[/] this rank keeps {after:,} parameters in the compressed layers "
                      f"against {before:,}: the two factors outgrow the layer; pick a smaller --rank",
                      markup=True)
    console.print(f"saved to {out}")
