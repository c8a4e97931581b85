"""Benchmark: Dynamic Sparse Learning (DSL, Wang et al. WSDM 2024) for LightGCN and MF-BPR on Gowalla.

Four variants per model, trained with the same epochs, batch size, L2 and time budget (learning rate
tuned per variant): dense (dim 64), DSL at density 0.2 (prune/regrow every ``delta_t`` steps,
regrowth by the gradient summed since the last mask update: see :mod:`recsys.dsl`), static random
sparsity at 0.2 (same initial masks, never updated) and dense with dim round(64 x 0.2) = 13 (about
the same number of parameters). Quality: Recall@20 and NDCG@20 by full ranking on the test split (train items
excluded, LightGCN definitions), computed once at the end of training. Cost: training seconds per
epoch; stored bytes of the sparse export (CSR: int32 indptr + uint8 column indices for dim <= 256 +
float32 values; index overhead counted) vs the float32 dense tables; top-k serving latency (k=20, one
batch of users, seen items excluded) from the sparse export vs the dense model.

Hyper-parameters (``HPARAMS``) come from ``--tune``, which trains on a dev split carved out of train
(10% of each user's train items, seeded) and evaluates that split, never the test split. Each variant
gets the learning rate of the grid with its best final dev Recall@20 (so no variant is judged at
another's learning rate); DSL then also picks ``delta_t`` at its learning rate. The epochs are fixed
per model: MF 50, the dense model's best dev epoch in a first tuning pass (dev Recall@20 peaked at
epoch 45-50, lr 0.002); LightGCN 30, what the CPU budget affords with room to spare (its dev curve was
still rising when a 720 s budget ran out at epoch 20). Batch sizes are large (LightGCN 16,384, MF
8,192) to keep epochs short on CPU; L2 1e-4 (LightGCN's default). The tune run writes its dev curves
to ``benchmarks/results/dsl_gowalla_tune.json`` (a run with ``--models X`` replaces only X's entry)
and plots dev Recall@20 vs epoch per variant to ``benchmarks/results/dsl_gowalla.png``. The reported
run trains on the full train split. ``--dev-run VARIANT --set KEY=VALUE ...`` trains one variant on the
same dev split with :class:`~recsys.training.cf.CFTrainConfig` overrides (e.g. ``weight_decay=0``) and
prints its dev curve: a probe outside the grid, which writes no results file.

Threads: one torch thread by default (``--threads``): on a shared 2-core machine two OpenMP threads
lose badly to oversubscription. ``--quick`` runs a tiny subsample for smoke checking (no result file
unless ``--out`` is given). Prints one JSON object and writes ``benchmarks/results/dsl_gowalla.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from recsys.data.implicit import ImplicitDataset, load_implicit
from recsys.models.cf import CFModel, Recommender
from recsys.ranking import evaluate_ranking
from recsys.sparse_export import export_sparse, load_sparse
from recsys.training.cf import CFTrainConfig, train_cf
from sparsekit.atomic import atomic_path
from sparsekit.dataroot import dataset_path
from sparsekit.provenance import commit

RESULTS = ROOT / "benchmarks" / "results"
DENSITY, FULL_DIM, K = 0.2, 64, 20
SMALL_DIM = round(FULL_DIM * DENSITY)
PAPER = {"lightgcn": {"recall@20": 0.1830, "ndcg@20": 0.1554,
                      "setting": "LightGCN paper / reference code: dim 64, 3 layers, lr 0.001, batch 2048, "
                                 "up to 1000 epochs"}}
# Per-variant learning rates and DSL's delta_t: chosen by --tune on the dev split (dsl_gowalla_tune.json).
HPARAMS: dict[str, dict[str, Any]] = {
    "lightgcn": {"lr": {"dense": 0.02, "dsl": 0.02, "static": 0.02, "small": 0.02}, "batch_size": 16384,
                 "epochs": 30, "dsl_delta_t": 25, "weight_decay": 1e-4, "layers": 3},
    "mf": {"lr": {"dense": 0.002, "dsl": 0.002, "static": 0.005, "small": 0.002}, "batch_size": 8192,
           "epochs": 50, "dsl_delta_t": 200, "weight_decay": 1e-4},
}
# Wall seconds of training per variant (the same for every variant of a model); epochs normally end first.
BUDGET_S = {"lightgcn": 900.0, "mf": 300.0}
TUNE_GRID = {"lightgcn": {"lr": [0.02, 0.05], "delta_t": [25, 100]},
             "mf": {"lr": [0.002, 0.005, 0.01], "delta_t": [50, 200]}}
TUNE_EVAL_EVERY = 10


@dataclass
class Variant:
    name: str
    dim: int
    density: float | None = None
    static: bool = False


VARIANTS = [Variant("dense", FULL_DIM), Variant("dsl", FULL_DIM, DENSITY),
            Variant("static", FULL_DIM, DENSITY, static=True), Variant("small", SMALL_DIM)]


def dev_split(train: sp.csr_matrix, fraction: float = 0.1, seed: int = 0) -> tuple[sp.csr_matrix, ...]:
    """``(fit, dev)``: about ``fraction`` of each user's train items (at least 1 if it has 2+) go to dev."""
    train = sp.csr_matrix(train)
    counts = np.diff(train.indptr)
    num_dev = np.where(counts >= 2, np.maximum(1, np.rint(fraction * counts)), 0).astype(np.int64)
    rows = np.repeat(np.arange(train.shape[0]), counts)
    order = np.lexsort((np.random.default_rng(seed).random(train.nnz), rows))
    rank = np.empty(train.nnz, dtype=np.int64)
    rank[order] = np.arange(train.nnz) - train.indptr[rows[order]]
    is_dev = rank < num_dev[rows]

    def part(sel: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((train.data[sel], (rows[sel], train.indices[sel])), shape=train.shape)

    return part(~is_dev), part(is_dev)


def dev_dataset(data: ImplicitDataset, seed: int) -> ImplicitDataset:
    """Train minus the dev split (:func:`dev_split`) as training data, the dev split as test."""
    fit, dev = dev_split(data.train, seed=seed)
    return ImplicitDataset(fit, dev, data.num_users, data.num_items)


def quick_subset(data: ImplicitDataset, num_users: int = 2000) -> ImplicitDataset:
    """The first ``num_users`` users and the items they touch (ids remapped), for ``--quick``."""
    train, test = data.train[:num_users], data.test[:num_users]
    items = np.unique(np.concatenate([train.indices, test.indices]))
    return ImplicitDataset(train[:, items].tocsr(), test[:, items].tocsr(), num_users, items.size)


def config_for(model: str, variant: Variant, hp: dict[str, Any], args: argparse.Namespace,
               **overrides: Any) -> CFTrainConfig:
    fields = {"model": model, "dim": variant.dim, "lr": hp["lr"][variant.name], "epochs": hp["epochs"],
              "batch_size": hp["batch_size"], "weight_decay": hp["weight_decay"],
              "layers": hp.get("layers", 3),
              "density": variant.density, "static_sparsity": variant.static, "dsl_delta_t": hp["dsl_delta_t"],
              "seed": args.seed, "time_budget_s": args.budget[model], "device": args.device,
              "progress": args.progress}
    return CFTrainConfig(**(fields | overrides))


def _timing(history: list[dict[str, Any]]) -> dict[str, Any]:
    epochs = max(len(history), 1)
    train_s, cpu_s = (sum(r.get(key, 0.0) for r in history) for key in ("train_s", "cpu_s"))
    return {"epochs_run": len(history), "train_s": round(train_s, 1),
            "s_per_epoch": round(train_s / epochs, 2), "cpu_s_per_epoch": round(cpu_s / epochs, 2),
            "final_loss": round(history[-1]["loss"], 5) if history else None}


def median_ms(fn: Any, repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


# ---- the reported run ---------------------------------------------------------------------------------


def run_variant(model_kind: str, variant: Variant, data: ImplicitDataset, args: argparse.Namespace,
                workdir: Path) -> tuple[CFModel, dict[str, Any]]:
    config = config_for(model_kind, variant, args.hparams[model_kind], args)
    model, history = train_cf(config, data)
    test = evaluate_ranking(model.scorer(), data.train, data.test, k=K, device=model.device)
    manifest = export_sparse(model, workdir / f"{model_kind}-{variant.name}")
    params = sum(int((p != 0).sum()) for p in model.sparse_parameters().values())
    row = {"dim": variant.dim, "density": variant.density, "lr": config.lr,
           "recall@20": round(test.recall, 5), "ndcg@20": round(test.ndcg, 5), "test_users": test.users,
           **_timing(history),
           "nonzero_embedding_params": params, "dense_fp32_bytes": manifest.counts["dense_bytes"],
           "sparse_export_bytes": manifest.counts["stored_bytes"]}
    print(f"{model_kind}/{variant.name}: {row}", file=sys.stderr, flush=True)
    return model, row


def serving(model_kind: str, dense: CFModel, dsl: CFModel, data: ImplicitDataset, args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    """Top-k latency: sparse export of the DSL model vs the dense model; the export must serve exactly."""
    users = np.random.default_rng(args.seed).choice(data.num_users, min(args.serve_batch, data.num_users),
                                                    replace=False)
    dense_rec, dsl_rec = Recommender.from_model(dense), Recommender.from_model(dsl)
    load_start = time.perf_counter()
    sparse_rec = load_sparse(workdir / f"{model_kind}-dsl", device=args.device)
    load_s = time.perf_counter() - load_start
    want_items, want_scores = dsl_rec.recommend(users, k=K)
    items, scores = sparse_rec.recommend(users, k=K)
    return {
        "batch_users": int(users.size), "k": K,
        "dense_ms": median_ms(lambda: dense_rec.recommend(users, k=K)),
        "sparse_export_ms": median_ms(lambda: sparse_rec.recommend(users, k=K)),
        "sparse_export_load_s": round(load_s, 2),
        "export_vs_dsl_model_max_abs_score_diff": float(np.max(np.abs(scores - want_scores))),
        "export_vs_dsl_model_same_items": bool(np.array_equal(items, want_items)),
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else float("inf")


def _quality_entries(prefix: str, recall: dict[str, float]) -> list[tuple[str, float, str, float]]:
    dsl = recall["dsl"]
    return [
        (f"{prefix}DSL Recall@20 / static random sparsity Recall@20 (both density {DENSITY})",
         _ratio(dsl, recall["static"]), ">", 1.0),
        (f"{prefix}DSL Recall@20 / dense dim {SMALL_DIM} (equal parameters) Recall@20",
         _ratio(dsl, recall["small"]), ">", 1.0),
        (f"{prefix}DSL Recall@20 / dense dim {FULL_DIM} Recall@20", _ratio(dsl, recall["dense"]), ">=", 0.9),
    ]


def _judged(entries: list[tuple[str, float, str, float]]) -> list[dict[str, Any]]:
    return [entry(*e) for e in entries]


def acceptance(model_kind: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's criteria on the test split: quality ratios and stored bytes."""
    entries = _quality_entries(f"{model_kind}: ", {name: row["recall@20"] for name, row in rows.items()})
    entries.append((f"{model_kind}: DSL sparse-export stored bytes (incl. indptr + indices) / dense float32 "
                    "bytes", _ratio(rows["dsl"]["sparse_export_bytes"], rows["dense"]["dense_fp32_bytes"]),
                    "<=", 0.3))
    return _judged(entries)


def tune_acceptance(tuning: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality criteria on the dev split, each variant at its chosen settings (final dev Recall@20)."""
    entries = []
    for model_kind, result in tuning.items():
        chosen, recall = result["chosen"], {}
        for curve in result["curves"].values():
            name = curve["variant"]
            if curve["lr"] == chosen["lr"][name] and (name != "dsl" or
                                                      curve["dsl_delta_t"] == chosen["dsl_delta_t"]):
                recall[name] = curve["dev_recall@20"][-1][1]
        entries += _quality_entries(f"{model_kind} (dev split, tuning run): ", recall)
    return _judged(entries)


def run_model(model_kind: str, data: ImplicitDataset, args: argparse.Namespace,
              workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    models, rows = {}, {}
    for variant in VARIANTS:
        models[variant.name], rows[variant.name] = run_variant(model_kind, variant, data, args, workdir)
    out: dict[str, Any] = {"hparams": args.hparams[model_kind], "budget_s": args.budget[model_kind],
                           "variants": rows}
    out["serving"] = serving(model_kind, models["dense"], models["dsl"], data, args, workdir)
    if model_kind in PAPER:
        dense = rows["dense"]
        out["paper_reference"] = PAPER[model_kind] | {
            "ours_dense_recall@20": dense["recall@20"], "ours_dense_ndcg@20": dense["ndcg@20"],
            "ours_dense_epochs": dense["epochs_run"]}
    return out, acceptance(model_kind, rows)


# ---- tuning on the dev split ----------------------------------------------------------------------------


def _dev_curve(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["epoch"], round(r["recall@20"], 5)) for r in history if "recall@20" in r]


def tune_model(model_kind: str, dev_data: ImplicitDataset, args: argparse.Namespace) -> dict[str, Any]:
    """Per variant: the grid learning rate with the best final dev Recall@20; for DSL then ``delta_t``."""
    grid, hp = TUNE_GRID[model_kind], args.hparams[model_kind]
    curves: dict[str, Any] = {}

    def dev_recall(variant: Variant, lr: float, delta_t: int) -> float:
        config = config_for(model_kind, variant, hp, args, lr=lr, dsl_delta_t=delta_t,
                            eval_every=TUNE_EVAL_EVERY)
        history = train_cf(config, dev_data)[1]
        dynamic = variant.density is not None and not variant.static
        label = f"{variant.name} lr={lr}" + (f" delta_t={delta_t}" if dynamic else "")
        curves[label] = {"variant": variant.name, "lr": lr, "dsl_delta_t": delta_t,
                         "dev_recall@20": _dev_curve(history), **_timing(history)}
        print(f"tune {model_kind} {label}: {curves[label]}", file=sys.stderr, flush=True)
        return history[-1]["recall@20"]

    chosen: dict[str, Any] = {"lr": {}, "dsl_delta_t": hp["dsl_delta_t"]}
    for variant in VARIANTS:
        finals = {lr: dev_recall(variant, lr, hp["dsl_delta_t"]) for lr in grid["lr"]}
        chosen["lr"][variant.name] = max(finals, key=finals.get)
        if variant.name == "dsl":
            lr = chosen["lr"]["dsl"]
            by_delta = {hp["dsl_delta_t"]: finals[lr]} | {
                dt: dev_recall(variant, lr, dt) for dt in grid["delta_t"] if dt != hp["dsl_delta_t"]}
            chosen["dsl_delta_t"] = max(by_delta, key=by_delta.get)
    print(f"{model_kind} chosen: {chosen}", file=sys.stderr, flush=True)
    return {"chosen": chosen, "epochs": hp["epochs"], "grid": grid, "budget_s": args.budget[model_kind],
            "curves": curves, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "commit": commit()}  # the file merges runs of one model at a time: each names its own code


def plot(tuned: dict[str, Any], path: Path) -> None:
    """Dev Recall@20 vs epoch: each variant at its chosen settings (bold) and the rest of the grid (faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tuned), figsize=(6.5 * len(tuned), 4.8), squeeze=False)
    colors = {v.name: f"C{i}" for i, v in enumerate(VARIANTS)}
    for ax, (model_kind, result) in zip(axes[0], tuned.items(), strict=True):
        chosen = result["chosen"]
        for label, curve in result["curves"].items():
            name = curve["variant"]
            best = curve["lr"] == chosen["lr"][name] and (name != "dsl" or
                                                            curve["dsl_delta_t"] == chosen["dsl_delta_t"])
            points = curve["dev_recall@20"]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                    color=colors[name], alpha=1.0 if best else 0.25, linewidth=2 if best else 1, label=label)
        ax.set_title(f"{model_kind}, Gowalla dev split: dense dim {FULL_DIM}, DSL / static at density "
                     f"{DENSITY}, small = dim {SMALL_DIM}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev Recall@20")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# ---- entry point ------------------------------------------------------------------------------------------


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or key not in CFTrainConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a CFTrainConfig field, got {text!r}")
    return key, json.loads(value)


def dev_probe(model_kind: str, variant_name: str, overrides: dict[str, Any], dev_data: ImplicitDataset,
              args: argparse.Namespace) -> dict[str, Any]:
    """One variant on the dev split with ``overrides``: its dev Recall@20 curve and timing."""
    variant = {v.name: v for v in VARIANTS}[variant_name]
    config = config_for(model_kind, variant, args.hparams[model_kind], args, eval_every=TUNE_EVAL_EVERY,
                        **overrides)
    history = train_cf(config, dev_data)[1]
    return {"model": model_kind, "variant": variant_name, "overrides": overrides,
            "dev_recall@20": _dev_curve(history), **_timing(history)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", default="lightgcn,mf", help="comma-separated: lightgcn, mf")
    parser.add_argument("--epochs", type=int, help="override the tuned epochs of every model")
    parser.add_argument("--time-budget-s", type=float,
                        help="training seconds per variant (default per model)")
    parser.add_argument("--tune", action="store_true", help="choose hyper-parameters on a dev split of train")
    parser.add_argument("--quick", action="store_true", help="tiny subsample, 2 epochs: a smoke check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serve-batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dev-run", choices=[v.name for v in VARIANTS],
                        help="train one variant on the dev split (with --set overrides); print its curve")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_override,
                        help="with --dev-run: a CFTrainConfig field, e.g. weight_decay=0 or dsl_delta_t=10")
    args = parser.parse_args()
    if args.set and not args.dev_run:
        parser.error("--set goes with --dev-run")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.hparams = {m: dict(HPARAMS[m]) for m in args.models}
    args.budget = {m: args.time_budget_s or BUDGET_S[m] for m in args.models}
    if args.quick:
        for m in args.models:
            args.hparams[m].update(epochs=4, batch_size=2048, dsl_delta_t=5)
    if args.epochs:
        for hp in args.hparams.values():
            hp["epochs"] = args.epochs
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    run = BenchmarkRun("dsl_gowalla_tune" if args.tune else "dsl_gowalla", script="dsl_gowalla")
    root = dataset_path("gowalla-lightgcn")
    if root is None:
        sys.exit("dataset 'gowalla-lightgcn' not found under the data root (set SPARSEKIT_DATA)")
    data = load_implicit(root)
    if args.quick:
        data = quick_subset(data)
    metrics: dict[str, Any] = {"dataset": "gowalla-lightgcn", "num_users": data.num_users,
                               "num_items": data.num_items, "train": int(data.train.nnz),
                               "threads": args.threads, "quick": args.quick}
    acceptance_rows: list[dict[str, Any]] = []
    if args.dev_run:
        for m in args.models:
            print(json.dumps(dev_probe(m, args.dev_run, dict(args.set), dev_dataset(data, args.seed), args)))
        return
    if args.tune:
        dev_data = dev_dataset(data, args.seed)
        metrics["split"] = "dev (10% of each user's train items)"
        metrics["tuning"] = {m: tune_model(m, dev_data, args) for m in args.models}
        default_out = RESULTS / "dsl_gowalla_tune.json"
    else:
        metrics["split"] = "test (train items excluded)"
        with tempfile.TemporaryDirectory(prefix="dsl_gowalla-") as tmp:
            for m in args.models:
                metrics[m], rows = run_model(m, data, args, Path(tmp))
                acceptance_rows += rows
        default_out = RESULTS / "dsl_gowalla.json"
    out = args.out or (None if args.quick else default_out)
    if args.tune and out is not None:  # tuning one model at a time keeps the others' results
        previous = json.loads(out.read_text())["metrics"]["tuning"] if out.exists() else {}
        metrics["tuning"] = previous | metrics["tuning"]
        acceptance_rows = tune_acceptance(metrics["tuning"])
        plot(metrics["tuning"], out.with_name("dsl_gowalla.png"))
    run.report(metrics, acceptance_rows, out)


if __name__ == "__main__":
    main()
