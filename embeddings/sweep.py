"""The budget sweep of the embedding compression benchmark (VLDB 2024, "Experimental Analysis of Large-scale
Learnable Vector Storage Compression"): every method x memory budget x seed x CTR model, trained the same way.

Each run builds the method's table at the budget (``BudgetError``: the cell is recorded as infeasible),
trains the CTR model with early stopping on validation AUC (:func:`recsys.training.ctr.train_ctr`), lets
the table finalize into its serving form, and records AUC / logloss on validation and test, the serving
table's stored bytes, and training and inference samples/s. Runs are written one JSON file each
(atomically) under ``<out>/runs/``, with the commit of the code that trained it; a rerun skips finished
runs, so a killed sweep resumes. ``workers`` > 1 trains that many runs at once in spawned processes of
``threads`` threads each (every run seeds itself, so where a run trains does not change it); their files
are written as they finish.
``<out>/sweep.json`` records the data and training settings; a rerun with other ones is refused rather
than mixed in.

Seeds: a run seeds its table's init from its own seed (:func:`table_seed`) before building it, so it
does not depend on what ran before it in the process, and tables with hash functions or clustering
(hashing, ROBE, DHE, dedup, a hashed composition) take the run's seed, so that seeds vary the collisions
as well as the init. Folders written before this (``seeding`` 1 in ``sweep.json``) are not resumed.

DeepFM and Wide&Deep also read a dim-1 first-order table (one float per feature, 1/16 of the full dim-16
table). ``first_order="free"`` (default) keeps it full precision and outside the budget, the convention of
PEP and OptEmbed, which count the dim-``d`` table only. ``"counted"`` charges it to the budget: the budget
is then a fraction of *both* full tables, the compressed table gets what the full first-order table leaves
(``(budget * (full + first) - first) / full`` of its own full size), and ``stored_bytes`` adds the
first-order bytes. Below ``first / (full + first)`` nothing is left and the cell is infeasible.
``"projected"`` charges the same budget (a fraction of both full tables: the full model stays the
reference), but the compressed models read no first-order table: their first-order weights are projected
from the compressed embeddings (``wide="projected"`` of :class:`~recsys.models.ctr.wdl.WideDeep`, one
``dim``-vector per field), and only those ``num_fields x dim`` floats come out of the budget. The full
baseline keeps its table.

The report: a tidy table (polars -> CSV and Markdown, mean and std over seeds), AUC vs budget per method
(log x; PNG), and "which method at which budget": per model and budget the method with the best mean
*validation* AUC, with its test AUC and the gap to the full table's test AUC (test is never used to choose).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from embeddings.registry import COMPOSED, METHODS
from embeddings.table import FLOAT_BYTES, BudgetError, table_class
from recsys.data.ctr import DATASETS
from recsys.data.ctr_table import TableCTRConfig
from recsys.data.table_file import SUFFIXES, is_table_file
from sparsekit.atomic import atomic_path, write_text_atomic
from sparsekit.bounds import at_least, count, each_count, positive
from sparsekit.errors import InputError, TrainingDiverged
from sparsekit.provenance import commit

BASELINE = "full"
KINDS = METHODS + COMPOSED  # what a sweep may run: the methods, and compositions of two of them
IDENTITY = "sweep.json"
FIRST_ORDER = ("free", "counted", "projected")
SEEDING = 2  # how a run seeds its table (:func:`table_seed`, :func:`seed_options`); part of the identity


@dataclass
class SweepConfig:
    """What to sweep and how each run trains (defaults: the issue's Frappe grid with DCNv2)."""

    dataset: str = "frappe"
    table: TableCTRConfig | None = None  # how to read ``dataset`` when it is a table file (else unused)
    models: tuple[str, ...] = ("dcnv2",)
    methods: tuple[str, ...] = tuple(METHODS)
    budgets: tuple[float, ...] = (0.5, 0.1, 0.01, 0.001)
    seeds: tuple[int, ...] = (0, 1, 2)
    out_dir: str = "runs/embedding-sweep"
    embed_dim: int = 16
    max_epochs: int = 30
    patience: int = 2
    min_epochs: int = 1
    first_order: str = "free"  # DeepFM / WDL's dim-1 table: outside the budget, "counted" in it, or
    # "projected": compressed models project it from their embeddings, and that projection is counted
    lr: float = 1e-2  # Adam's learning rate (CTRTrainConfig's default)
    embedding_l2: float = 1e-2  # L2 on the embedding rows a batch reads (CTRTrainConfig's default)
    threads: int = 1  # torch threads per run
    workers: int = 1  # runs trained at once, each in its own process (not part of the folder's identity)
    data_root: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("models", "methods", "budgets", "seeds"):
            if not getattr(self, name):
                raise InputError(name, "needs at least one value")
            setattr(self, name, tuple(dict.fromkeys(getattr(self, name))))  # a repeat is one run, not two
        unknown = sorted(set(self.methods) - set(KINDS))
        if unknown:
            raise InputError("methods", f"unknown method(s) {unknown}; known: {sorted(KINDS)}")
        self._check_models()
        bad = [b for b in self.budgets if not 0.0 < b <= 1.0]
        if bad:
            raise InputError("budgets", f"budgets must lie in (0, 1], got {bad}")
        names = {f"{b:g}": b for b in self.budgets}
        if len(names) < len(self.budgets):
            raise InputError("budgets", f"{list(self.budgets)} holds different budgets with the same run "
                                        f"file name (budgets are named to 6 significant digits)")
        if self.first_order not in FIRST_ORDER:
            raise InputError("first_order", f"one of {FIRST_ORDER}, got {self.first_order!r}")
        positive(self, "lr")
        at_least(self, 0, "embedding_l2")
        each_count(self, 0, "seeds")
        if self.dataset in DATASETS:  # a named dataset has its own reader: table options are no part of it
            self.table = None
        elif not is_table_file(self.dataset):  # now, before the sweep folder is created
            raise InputError("dataset", f"{self.dataset!r} is neither a dataset ({', '.join(DATASETS)}) nor "
                                        f"a table file ({', '.join(sorted(SUFFIXES))})")
        count(self, 1, "embed_dim", "max_epochs", "patience", "min_epochs", "threads", "workers")
        if self.min_epochs > self.max_epochs:  # now, not at the first run, after the data loads
            raise InputError("min_epochs", f"{self.min_epochs} exceeds max_epochs {self.max_epochs}")

    def _check_models(self) -> None:
        """Refuse an unknown CTR model up front, before the data loads and the folder is claimed."""
        from recsys.training.ctr import CTR_MODELS

        unknown = sorted(set(self.models) - set(CTR_MODELS))
        if unknown:
            raise InputError("models", f"unknown CTR model(s) {unknown}; known: {sorted(CTR_MODELS)}")


@dataclass(frozen=True)
class RunKey:
    model: str
    method: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}__{self.method}__{self.budget:g}__s{self.seed}"


def run_keys(config: SweepConfig) -> list[RunKey]:
    """The baseline (full table, budget 1) plus every method x budget, for each model and seed."""
    keys = []
    for model in config.models:
        for seed in config.seeds:
            keys.append(RunKey(model, BASELINE, 1.0, seed))
            keys += [RunKey(model, m, b, seed) for m in config.methods for b in config.budgets]
    return keys


def first_order_bytes(model: str, num_features: int, field_dims: Sequence[int] | None = None) -> int:
    """Bytes ``model``'s full-precision first-order table (DeepFM, Wide&Deep) stores, its field offsets
    included (one float per feature + 8 bytes per field); 0 for the other models."""
    from recsys.models.ctr.wdl import WideDeep
    from recsys.training.ctr import CTR_MODELS

    if not issubclass(CTR_MODELS[model], WideDeep):
        return 0
    return num_features * FLOAT_BYTES + 8 * len(field_dims or ())


def projects_first_order(key: RunKey, config: SweepConfig) -> bool:
    """Whether ``key``'s model projects its first-order weights from its embeddings (module doc): under
    ``first_order="projected"``, every compressed run of a model with a first-order part."""
    from recsys.models.ctr.wdl import WideDeep
    from recsys.training.ctr import CTR_MODELS

    return (config.first_order == "projected" and key.method != BASELINE
            and issubclass(CTR_MODELS[key.model], WideDeep))


def table_budget(key: RunKey, num_features: int, config: SweepConfig,
                 field_dims: Sequence[int] | None = None) -> tuple[float, int]:
    """The compressed table's own budget fraction and the run's whole budget in bytes (see module doc)."""
    full = num_features * config.embed_dim * FLOAT_BYTES
    charged = config.first_order in ("counted", "projected")
    first = first_order_bytes(key.model, num_features, field_dims) if charged else 0
    allowed = int(key.budget * (full + first))
    projection = len(field_dims or ()) * config.embed_dim * FLOAT_BYTES
    side = projection if projects_first_order(key, config) else first
    return (allowed - side) / full, allowed


def table_seed(seed: int) -> int:
    """The seed of a run's table init: derived from the run's seed, so that the table's first draws differ
    from those of the model :func:`~recsys.training.ctr.train_ctr` builds after seeding with ``seed``."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def seed_options(kind: str, seed: int) -> dict[str, Any]:
    """``seed=`` for tables whose hash functions or clustering take one (hashing, ROBE, DHE, dedup, and a
    composition's inner table), so that the sweep's seeds vary the collisions too."""
    cls = table_class(kind)
    if "seed" in inspect.signature(cls).parameters:
        return {"seed": seed}
    inner = getattr(cls, "inner_kind", None)
    if inner and "seed" in inspect.signature(table_class(inner)).parameters:
        return {"table_options": {"seed": seed}}
    return {}


def seeded_table(kind: str, data: Any, dim: int, budget: float, seed: int) -> Any:
    """``kind``'s table for ``data`` at ``budget``, its init and hashes seeded from ``seed`` (module doc), so
    that it does not depend on what ran before it in the process."""
    torch.manual_seed(table_seed(seed))
    return table_class(kind)(data.num_features, dim, budget, field_dims=data.field_dims,
                             **seed_options(kind, seed))


def train_config(key: RunKey, config: SweepConfig) -> Any:
    """How every run of the sweep trains (:class:`~recsys.training.ctr.CTRTrainConfig`)."""
    from recsys.training.ctr import CTRTrainConfig

    return CTRTrainConfig(model=key.model, embed_dim=config.embed_dim, max_epochs=config.max_epochs,
                          patience=config.patience, min_epochs=config.min_epochs, lr=config.lr,
                          embedding_l2=config.embedding_l2, seed=key.seed, threads=config.threads,
                          wide="projected" if projects_first_order(key, config) else "table",
                          progress=False)


def run_one(key: RunKey, data: Any, config: SweepConfig) -> dict[str, Any]:
    """Train one cell; a method that cannot meet the budget gives ``status == "infeasible"``, a run whose
    predictions were never finite ``"diverged"`` (both are finished records, like ``"ok"``)."""
    from recsys.training.ctr import train_ctr

    row: dict[str, Any] = {**asdict(key), "dataset": config.dataset}
    budget, allowed = table_budget(key, data.num_features, config, data.field_dims)
    if budget <= 0:
        weights = ("the first-order projection" if projects_first_order(key, config)
                   else "the first-order table")
        return {**row, "status": "infeasible",
                "reason": f"{weights} alone needs more than the {allowed} bytes of the budget"}
    try:
        table = seeded_table(key.method, data, config.embed_dim, min(budget, 1.0), key.seed)
    except BudgetError as exc:
        return {**row, "status": "infeasible", "reason": str(exc)}
    try:
        result = train_ctr(train_config(key, config), data, table)
    except TrainingDiverged as exc:
        return {**row, "status": "diverged", "commit": commit(), "reason": str(exc)}
    served = result.model.embedding
    first = (result.model.first_order_bytes() if config.first_order != "free"
             and hasattr(result.model, "first_order_bytes") else 0)
    return {**row, "status": "ok", "commit": commit(), "table": served.kind,
            "stored_bytes": served.memory_bytes() + first, "first_order_bytes": first,
            "budget_bytes": allowed,
            "full_bytes": served.full_bytes(),
            "best_epoch": result.best_epoch, "epochs": len(result.history), **result.metrics}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`InputError` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _finished_run(path: Path, key: RunKey) -> dict[str, Any] | None:
    """The stored record of ``key``, or ``None`` (with a warning) when the file is damaged or incomplete:
    the run is then trained again and its file replaced."""
    try:
        row = _read_json(path)
    except InputError as exc:
        problem = str(exc)
    else:
        mismatched = [f for f, v in asdict(key).items() if row.get(f) != v]
        status = row.get("status")
        done = status in ("infeasible", "diverged") or (status == "ok" and "test_auc" in row)
        if not mismatched and done:
            return row
        problem = f"{path}: not a finished record of {key.name}" + (f" (differs in {mismatched})" if
                                                                     mismatched else "")
    warnings.warn(f"{problem}; running it again", stacklevel=2)
    return None


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, default=float))


def load_dataset(config: SweepConfig, seed: int = 0) -> Any:
    """The sweep's CTR data (:func:`recsys.data.ctr.load_ctr`), with one fixed split seed for every run."""
    from recsys.data.ctr import load_ctr

    return load_ctr(config.dataset, config.data_root, seed=seed, table=config.table)


def data_digest(data: Any) -> str:
    """SHA-256 of every split's feature ids and labels: an edited table of the same shape differs."""
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for array in (split.features, split.labels):
            digest.update(np.ascontiguousarray(array))  # the buffer itself: no copy
    return digest.hexdigest()


def sweep_identity(config: SweepConfig, data: Any) -> dict[str, Any]:
    """What every run of a sweep folder shares: the data (source, reading options, shape, contents) and the
    training settings. Models, methods, budgets and seeds may grow between resumes; these may not."""
    return {"dataset": config.dataset, "table": None if config.table is None else asdict(config.table),
            "field_dims": list(data.field_dims), "rows": [len(data.train), len(data.val), len(data.test)],
            "data_sha256": data_digest(data),
            "embed_dim": config.embed_dim, "max_epochs": config.max_epochs, "patience": config.patience,
            "min_epochs": config.min_epochs, "first_order": config.first_order, "seeding": SEEDING,
            "lr": config.lr, "embedding_l2": config.embedding_l2}


def _check_identity(out_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``sweep.json`` on first use; refuse to resume a folder whose runs came from another setup."""
    path = out_dir / IDENTITY
    if not any((out_dir / "runs").glob("*.json")):  # no finished run to mix with
        _write_json(path, identity)
        return
    if not path.exists():
        raise InputError(path, f"missing, but {out_dir / 'runs'} holds run files: how they were trained "
                               "is unknown, and resuming could mix them with runs trained otherwise. Use "
                               "another --out")
    # folders from before a setting existed: min_epochs 1, first_order free, seeding 1 (the table drawn
    # from whatever state the process had reached, hashes seeded 0 whatever the run's seed), lr and
    # embedding_l2 at CTRTrainConfig's defaults; the data's checksum was not recorded (taken as unchanged)
    recorded = _read_json(path)
    stored = {"min_epochs": 1, "first_order": "free", "seeding": 1, "lr": 1e-2, "embedding_l2": 1e-2,
              "data_sha256": identity.get("data_sha256"), **recorded}
    if stored.get("dataset") in DATASETS:  # the CLI once recorded its unused table options here
        stored["table"] = None
    changed = sorted(k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k))
    if changed:
        raise InputError("out", f"{out_dir} holds runs of a different sweep (differs in {changed}); resuming "
                                "would mix them. Use another --out")
    if "data_sha256" not in recorded and identity.get("data_sha256"):  # checked on every later resume
        _write_json(path, {**recorded, "data_sha256": identity["data_sha256"]})


def run_sweep(config: SweepConfig) -> pl.DataFrame:
    """Run (or resume) the sweep; returns one row per run, finished runs read back from disk."""
    commit()  # pinned now: runs record the code this process loaded, not a commit made while they train
    runs = Path(config.out_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config)
    _check_identity(Path(config.out_dir), json.loads(json.dumps(sweep_identity(config, data))))
    keys = run_keys(config)
    rows: dict[RunKey, dict[str, Any]] = {}
    for key in keys:
        path = runs / f"{key.name}.json"
        finished = _finished_run(path, key) if path.is_file() else None
        if finished is not None:
            rows[key] = finished
    todo = [key for key in keys if key not in rows]
    with tqdm(total=len(keys), initial=len(rows), desc="embedding sweep", disable=not config.progress) as bar:
        for key, row in _train(todo, data, config):
            _write_json(runs / f"{key.name}.json", row)
            rows[key] = row
            bar.update()
    return pl.DataFrame([rows[key] for key in keys], infer_schema_length=None)


def _train(keys: list[RunKey], data: Any, config: SweepConfig) -> Iterator[tuple[RunKey, dict[str, Any]]]:
    """``(key, row)`` of each run of ``keys`` as it finishes: here one by one, or in ``config.workers``
    spawned processes that get the data once each and report the parent's commit."""
    if config.workers == 1 or len(keys) <= 1:
        for key in keys:
            yield key, run_one(key, data, config)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(config.workers, len(keys)), mp_context=context, initializer=_start_worker,
                             initargs=(data, config, commit())) as pool:
        futures = {pool.submit(_run_in_worker, key): key for key in keys}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # a failed run (or an interrupt) stops the sweep: queued runs do not start
            pool.shutdown(cancel_futures=True)


_WORKER: dict[str, Any] = {}


def _start_worker(data: Any, config: SweepConfig, code: str) -> None:
    os.environ["SPARSEKIT_COMMIT"] = code  # runs record the code the sweep started from
    _WORKER.update(data=data, config=config)


def _run_in_worker(key: RunKey) -> dict[str, Any]:
    return run_one(key, _WORKER["data"], _WORKER["config"])


def runs_trained_at(runs: pl.DataFrame) -> list[tuple[str, int]]:
    """(commit, finished runs it trained) pairs in commit order: which code a sweep's numbers came from."""
    return sorted(runs.filter(pl.col("status") == "ok")["commit"].value_counts().rows())


def summarize(runs: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (model, method, budget); infeasible cells keep a row with n_ok 0."""
    ok = pl.col("status") == "ok"
    metrics = ["val_auc", "test_auc", "test_logloss", "stored_bytes", "train_samples_per_s",
               "inference_samples_per_s"]
    aggs = [pl.col(m).filter(ok).mean().alias(m) for m in metrics]
    aggs += [pl.col(m).filter(ok).std().alias(f"{m}_std") for m in ("val_auc", "test_auc")]
    aggs += [ok.sum().alias("n_ok"), pl.len().alias("n_runs"), pl.col("budget_bytes").max()]
    return runs.group_by("model", "method", "budget").agg(aggs).sort("model", "budget", "method",
                                                                     descending=[False, True, False])


def recommend(summary: pl.DataFrame, composed: bool = False, exclude: Sequence[str] = ()) -> pl.DataFrame:
    """Per model and budget: the method with the best mean validation AUC, its test AUC and the gap to
    the full table's mean test AUC. Only methods whose every seed trained compete (one that diverged in
    some seeds could win on its lucky ones). Compositions (:data:`embeddings.registry.COMPOSED`)
    compete only with ``composed``; methods in ``exclude`` never."""
    full = (summary.filter(pl.col("method") == BASELINE)
            .select("model", pl.col("test_auc").alias("full_test_auc")))
    cand = summary.filter((pl.col("method") != BASELINE) & (pl.col("n_ok") > 0)
                          & (pl.col("n_ok") == pl.col("n_runs")))
    left_out = [*exclude, *([] if composed else COMPOSED)]
    cand = cand.filter(~pl.col("method").is_in(left_out))
    best = cand.sort("val_auc", descending=True).group_by("model", "budget", maintain_order=True).first()
    return (best.join(full, on="model", how="left")
            .with_columns((pl.col("full_test_auc") - pl.col("test_auc")).alias("gap_to_full"))
            .select("model", "budget", "method", "val_auc", "test_auc", "full_test_auc", "gap_to_full",
                    "stored_bytes", "budget_bytes")
            .sort("model", "budget", descending=[False, True]))


def _cell(column: str, v: Any) -> str:
    """Budgets as given (``1e-05``, ``5e-05``: fixed decimals made them collide), other floats to 4
    decimals, or 3 significant digits when smaller than 0.001 (a gap of 4e-05 is not 0.0000)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if not isinstance(v, float):
        return str(v)
    if column == "budget":
        return f"{v:g}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"


def _markdown(df: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(c, v) for c, v in zip(df.columns, row, strict=True)) + " |"
              for row in df.iter_rows()]
    return "\n".join(lines) + "\n"


def plot(summary: pl.DataFrame, path: Path) -> None:
    """Test AUC vs budget (log x) per method, one panel per model; the full table as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = summary["model"].unique().sort().to_list()
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = summary.filter((pl.col("model") == model) & (pl.col("n_ok") > 0))
        for method in part["method"].unique().sort().to_list():
            rows = part.filter(pl.col("method") == method).sort("budget")
            if method == BASELINE:
                ax.axhline(rows["test_auc"][0], color="k", linestyle="--", label="full table")
            else:
                ax.plot(rows["budget"], rows["test_auc"], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("memory budget (fraction of the full table)")
        ax.set_ylabel("test AUC (mean over seeds)")
        ax.set_title(model)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(runs: pl.DataFrame, out_dir: str | Path,
                 stem: str = "embedding_compression") -> dict[str, Path]:
    """CSV of every run, CSV + Markdown summary with the recommendation, and the PNG plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    best = recommend(summary)
    paths = {"runs_csv": out / f"{stem}_runs.csv", "csv": out / f"{stem}.csv", "md": out / f"{stem}.md",
             "png": out / f"{stem}.png"}
    with atomic_path(paths["runs_csv"]) as tmp:
        runs.drop([c for c in runs.columns if runs[c].dtype == pl.Object]).write_csv(tmp)
    with atomic_path(paths["csv"]) as tmp:
        summary.write_csv(tmp)
    text = ["# Embedding compression: AUC vs memory budget", "", "## Which method at which budget",
            "Chosen by mean validation AUC among the published methods; test AUC reported once.", "",
            _markdown(best)]
    if summary["method"].is_in(list(COMPOSED)).any():
        text += ["## Which table at which budget, compositions included",
                 "The same choice with compositions of two methods (a shared-row table stored as "
                 "low-bit codes, e.g. `qr+int4`) allowed to compete.", "",
                 _markdown(recommend(summary, composed=True))]
    text += ["## All cells (mean over seeds)", "", _markdown(summary)]
    write_text_atomic(paths["md"], "\n".join(text))
    plot(summary, paths["png"])
    return paths
