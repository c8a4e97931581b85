"""Benchmark: Atomic Feature Mimicking (AFM, KDD 2024) low-rank compression of trained CTR models.

For each dataset (Frappe re-split 70/10/20, MovieLens-100k CTR; :mod:`recsys.data.ctr`) and model
(DeepFM, DCNv2 parallel): train with early stopping on validation AUC
(:func:`recsys.training.ctr.train_ctr`, its defaults: embedding dim 16, 400-400-400 tower), calibrate
once on a seeded sample of TRAIN rows, then compress the deep tower's hidden FC layers (plus, for
DCNv2, its three full-rank cross layers) at every rank of the sweep and at every explained-variance
energy. Each compressed model is evaluated once on validation and once on test. The reported rank is
chosen on VALIDATION: the smallest rank whose val AUC >= original val AUC - 0.001 (if none qualifies,
the rank with the best val AUC, flagged); its test AUC is then reported. An ablation replaces every
compressed layer by its calibration mean (rank 0) to show how much of the model's signal those layers
carry. A side sweep compresses the embedding table (per-field AFM, up-projection folded into the
tower's first FC layer) to show the table path. Inference speed: the original and the chosen
compressed model score the same 1024 test rows on CPU with ``torch.set_num_threads(1)``, alternating,
median of ``--repeats`` timed passes after warm-up. Parameters are counted over the layers
compression changed (:func:`recsys.lowrank.affected_layers`).

Acceptance (per dataset x model): >= 3x fewer parameters in the compressed layers at the chosen rank;
test AUC at that rank >= original test AUC - 0.001; >= 1.3x faster CPU inference at batch 1024.
Prints one JSON object, writes ``benchmarks/results/afm_ctr.json`` and the sweep tables as
``benchmarks/results/afm_ctr.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from environment import commit, machine, write_result  # noqa: E402
from torch import nn  # noqa: E402

from recsys.data.ctr import CTRDataset, load_frappe_ctr, load_movielens_ctr  # noqa: E402
from recsys.lowrank import Calibration, affected_layers, calibrate, compress, parameter_count  # noqa: E402
from recsys.training.ctr import CTRTrainConfig, batches, evaluate_ctr, train_ctr  # noqa: E402

LOADERS = {"frappe": load_frappe_ctr, "movielens": load_movielens_ctr}
AUC_TOLERANCE = 0.001
TARGET_PARAM_RATIO, TARGET_SPEEDUP = 3.0, 1.3
TIMING_BATCH = 1024


def _targets(model: nn.Module) -> list[str]:
    """The deep tower's hidden FC layers, and DCNv2's cross layers (the logit layers stay)."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and m.out_features > 1]
    return [n for n in names if n.startswith(("deep.", "cross."))]


class _Mean(nn.Module):
    """Ablation: a layer whose output is always its calibration mean (AFM at rank 0)."""

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean.expand(*x.shape[:-1], -1)


def _mean_only(model: nn.Module, calibration: Calibration) -> nn.Module:
    """A copy of ``model`` whose target layers all output their mean: how much their variance matters."""
    ablated = copy.deepcopy(model)
    for name, stats in calibration.stats.items():
        parent, _, child = name.rpartition(".")
        setattr(ablated.get_submodule(parent) if parent else ablated, child, _Mean(stats.mean[0]))
    return ablated


def _calibration_batches(data: CTRDataset, rows: int, seed: int) -> list[torch.Tensor]:
    order = np.random.default_rng(seed).permutation(len(data.train))[:rows]
    return list(batches(data.train.features, 2048, order=np.sort(order)))


def _evaluate(model: nn.Module, data: CTRDataset) -> dict[str, float]:
    val, test = evaluate_ctr(model, data.val), evaluate_ctr(model, data.test)
    return {
        "val_auc": round(val["auc"], 5),
        "test_auc": round(test["auc"], 5),
        "test_logloss": round(test["logloss"], 5),
    }


def _sweep_entry(
    model: nn.Module, low: nn.Module, data: CTRDataset, base: dict[str, float]
) -> dict[str, Any]:
    layers = affected_layers(low.lowrank_spec)
    before, after = parameter_count(model, layers), parameter_count(low, layers)
    scores = _evaluate(low, data)
    return {
        "ranks": {n: e["rank"] for n, e in low.lowrank_spec.items()},
        "params_before": before,
        "params_after": after,
        "param_ratio": round(before / after, 3),
        **scores,
        "val_auc_delta": round(scores["val_auc"] - base["val_auc"], 5),
        "test_auc_delta": round(scores["test_auc"] - base["test_auc"], 5),
    }


def _choose(sweep: list[dict[str, Any]], base_val: float) -> tuple[dict[str, Any], bool]:
    """Smallest rank whose val AUC >= base - tolerance; else the best val AUC (flagged)."""
    for entry in sweep:
        if entry["val_auc"] >= base_val - AUC_TOLERANCE:
            return entry, True
    return max(sweep, key=lambda e: e["val_auc"]), False


def _time_pair(original: nn.Module, low: nn.Module, ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each model, timed alternately (1 thread, no grad, eval mode)."""
    times: dict[str, list[float]] = {"original": [], "compressed": []}
    with torch.no_grad():
        for _ in range(3):
            original(ids), low(ids)
        for _ in range(repeats):
            for name, model in (("original", original), ("compressed", low)):
                start = time.perf_counter()
                model(ids)
                times[name].append(time.perf_counter() - start)
    orig, comp = statistics.median(times["original"]), statistics.median(times["compressed"])
    return {
        "original_ms": round(1000 * orig, 3),
        "compressed_ms": round(1000 * comp, 3),
        "speedup": round(orig / comp, 3),
    }


def run_model(data: CTRDataset, name: str, args: argparse.Namespace) -> dict[str, Any]:
    config = CTRTrainConfig(
        model=name,
        seed=args.seed,
        max_epochs=args.max_epochs,
        threads=1,
        device="cpu",
        progress=args.progress,
    )
    start = time.perf_counter()
    trained = train_ctr(config, data)
    model, train_s = trained.model, time.perf_counter() - start
    base = _evaluate(model, data)
    targets = _targets(model)
    calib_batches = _calibration_batches(data, args.calib_rows, args.seed)
    calibration = calibrate(model, calib_batches, [*targets, "embedding"])
    linear_calib = Calibration({t: calibration.stats[t] for t in targets}, calibration.rows)
    table_calib = Calibration({"embedding": calibration.stats["embedding"]}, calibration.rows)
    sweep = [
        {"rank": k, **_sweep_entry(model, compress(model, linear_calib, rank=k), data, base)}
        for k in args.ranks
    ]
    energies = [
        {"energy": e, **_sweep_entry(model, compress(model, linear_calib, energy=e), data, base)}
        for e in args.energies
    ]
    tables = [
        {"rank": k, **_sweep_entry(model, compress(model, table_calib, rank=k), data, base)}
        for k in args.table_ranks
    ]
    ablation = _evaluate(_mean_only(model, linear_calib), data)
    chosen, met = _choose(sweep, base["val_auc"])
    low = compress(model, linear_calib, rank=chosen["rank"])
    ids = torch.from_numpy(data.test.features[:TIMING_BATCH])
    timing = _time_pair(model, low, ids, args.repeats)
    return {
        "model": name,
        "train_s": round(train_s, 1),
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "targets": targets,
        "calibration_rows": calibration.rows,
        "original": {**base, "parameters_total": sum(p.numel() for p in model.parameters())},
        "chosen_rank": chosen["rank"],
        "val_criterion_met": met,
        "chosen": chosen,
        "timing_batch_1024": timing,
        "rank_sweep": sweep,
        "energy_sweep": energies,
        "embedding_sweep": tables,
        "ablation_targets_at_mean": ablation,
    }


def _acceptance(dataset: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    tag, chosen = f"{dataset} {result['model']}", result["chosen"]
    k = result["chosen_rank"]
    note = "" if result["val_criterion_met"] else " (no rank met the val criterion: best val AUC rank)"
    delta = chosen["test_auc_delta"]
    speed = result["timing_batch_1024"]["speedup"]
    return [
        {
            "criterion": f"{tag}: params in compressed layers, original / AFM at val-chosen rank {k}{note}",
            "value": chosen["param_ratio"],
            "op": ">=",
            "target": TARGET_PARAM_RATIO,
            "pass": bool(chosen["param_ratio"] >= TARGET_PARAM_RATIO),
        },
        {
            "criterion": f"{tag}: test AUC at val-chosen rank {k} minus original test AUC{note}",
            "value": delta,
            "op": ">=",
            "target": -AUC_TOLERANCE,
            "pass": bool(delta >= -AUC_TOLERANCE - 1e-12),
        },
        {
            "criterion": f"{tag}: CPU inference speedup at batch 1024, 1 thread, rank {k} vs original",
            "value": speed,
            "op": ">=",
            "target": TARGET_SPEEDUP,
            "pass": bool(speed >= TARGET_SPEEDUP),
        },
    ]


def _markdown(metrics: dict[str, Any]) -> str:
    lines = [
        "# AFM low-rank CTR compression (benchmarks/afm_ctr.py)",
        "",
        "Parameters are counted over the compressed layers; AUC deltas are against the uncompressed model "
        "of the same run. The reported rank is chosen on validation (smallest rank with val AUC >= "
        "original - 0.001).",
        "",
    ]
    for dataset, results in metrics["datasets"].items():
        for r in results:
            o, t, ablation = r["original"], r["timing_batch_1024"], r["ablation_targets_at_mean"]
            lines += [
                f"## {dataset} / {r['model']}",
                "",
                f"Original: val AUC {o['val_auc']}, test AUC {o['test_auc']} (best epoch {r['best_epoch']}); "
                f"chosen rank **{r['chosen_rank']}** (val criterion met: {r['val_criterion_met']}); "
                f"batch-1024 CPU inference {t['original_ms']} ms -> {t['compressed_ms']} ms "
                f"(**{t['speedup']}x**). Ablation, compressed layers fixed at their mean: val AUC "
                f"{ablation['val_auc']}, test AUC {ablation['test_auc']}.",
                "",
                "| setting | params before | params after | ratio | val AUC | test AUC | test delta |",
                "|---|---|---|---|---|---|---|",
            ]
            rows = (
                [(f"rank {e['rank']}", e) for e in r["rank_sweep"]]
                + [
                    (f"energy {e['energy']} (ranks {sorted(set(e['ranks'].values()))})", e)
                    for e in r["energy_sweep"]
                ]
                + [(f"embedding rank {e['rank']}", e) for e in r["embedding_sweep"]]
            )
            for label, e in rows:
                lines.append(
                    f"| {label} | {e['params_before']} | {e['params_after']} | {e['param_ratio']} | "
                    f"{e['val_auc']} | {e['test_auc']} | {e['test_auc_delta']:+.5f} |"
                )
            lines.append("")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datasets", default="frappe,movielens")
    parser.add_argument("--models", default="deepfm,dcnv2")
    parser.add_argument("--ranks", type=_ints, default=_ints("1,2,4,8,16,24,32,48,64,96,128"))
    parser.add_argument("--energies", type=_floats, default=_floats("0.9,0.95,0.99,0.999"))
    parser.add_argument("--table-ranks", type=_ints, default=_ints("4,8,12"))
    parser.add_argument("--calib-rows", type=int, default=20000)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "afm_ctr.json")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, Any]]] = {}
    acceptance: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        data = LOADERS[dataset](seed=args.seed)
        results[dataset] = []
        for name in args.models.split(","):
            result = run_model(data, name, args)
            results[dataset].append(result)
            acceptance += _acceptance(dataset, result)
            print(
                f"{dataset} {name}: rank {result['chosen_rank']} {result['chosen']} "
                f"{result['timing_batch_1024']}",
                file=sys.stderr,
            )
    metrics = {
        "datasets": results,
        "embed_dim": 16,
        "hidden": [400, 400, 400],
        "auc_tolerance": AUC_TOLERANCE,
        "threads": 1,
        "calib_rows": args.calib_rows,
        "split": "70/10/20 seeded, rank chosen on val",
    }
    result = {
        "benchmark": "afm_ctr",
        "commit": commit(),
        "machine": machine(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "wall_s": round(time.perf_counter() - start, 2),
        "metrics": metrics,
        "acceptance": acceptance,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    args.out.with_suffix(".md").write_text(_markdown(metrics) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
