"""Benchmark: the cells of the embedding-compression grid that carry acceptance targets (DCNv2 at budgets
0.1 and 0.01, DeepFM at 0.1), read back from the grid's own sweep folder as retrained under the current
sweep seeding.

``benchmarks/embedding_compression.py``'s committed results predate a seeding change
(:data:`embeddings.sweep.SEEDING`); its grid is being retrained in ``runs/embedding-sweep``. This script
reads the finished runs of every published method (:data:`embeddings.registry.METHODS`) in those cells,
plus each model's full-table baseline, 3 seeds each, and judges the same gap targets on them
(:data:`benchmarks.embedding_compression.GAP_TARGETS`): the best method per cell chosen on validation
AUC, its test AUC against the full table's. It never trains: a missing run is an error naming the
command that trains it. ``--models`` limits it to some models' target cells (their runs can be trained
apart: DeepFM's cell was retrained after DCNv2's, into ``--out
benchmarks/results/embedding_compression_recheck_deepfm.json``). Writes
``benchmarks/results/embedding_compression_recheck.json`` (../shared/docs/DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl

from benchmarks.embedding_compression import GAP_TARGETS, _entry, _run_commits
from benchmarks.environment import BenchmarkRun
from embeddings.registry import METHODS
from embeddings.sweep import SEEDING, SweepConfig, recommend, run_keys, run_sweep, summarize


def cells(models: tuple[str, ...] | None = None) -> dict[str, tuple[float, ...]]:
    """Model -> the budgets with gap targets (only ``models``' when given)."""
    out: dict[str, tuple[float, ...]] = {}
    for model, budget, _ in GAP_TARGETS:
        if models is None or model in models:
            out[model] = (*out.get(model, ()), budget)
    unknown = sorted(set(models or ()) - set(out))
    if unknown:
        raise SystemExit(f"--models: no gap target for {unknown}; models with targets: "
                         f"{sorted({m for m, _, _ in GAP_TARGETS})}")
    return out


def configs(work: Path, seeds: tuple[int, ...], models: tuple[str, ...] | None = None) -> list[SweepConfig]:
    return [SweepConfig(models=(model,), methods=METHODS, budgets=budgets, seeds=seeds, out_dir=str(work),
                        max_epochs=30, min_epochs=10, progress=False)
            for model, budgets in cells(models).items()]


MODEL_NAMES = {"dcnv2": "DCNv2", "deepfm": "DeepFM"}


def _cell_names(cells_: dict[str, tuple[float, ...]]) -> str:
    return ", ".join(f"{MODEL_NAMES.get(m, m)} at {' and '.join(f'{b:g}' for b in budgets)}"
                     for m, budgets in cells_.items())


def caveats(checked: dict[str, tuple[float, ...]]) -> list[str]:
    """What this file leaves out of benchmarks/embedding_compression.py's grid."""
    every = cells()
    rest = {m: tuple(b for b in bs if b not in checked.get(m, ())) for m, bs in every.items()}
    rest = {m: bs for m, bs in rest.items() if bs}
    others = f"; the other target cells ({_cell_names(rest)}) are in their own recheck files" if rest else ""
    return [f"a part of the grid: the target cells checked here ({_cell_names(checked)}), published methods "
            f"only{others}; the rest of the grid (budgets without targets, the compositions) is not "
            "retrained under this seeding yet"]


def missing_runs(cfg: SweepConfig) -> list[str]:
    runs = Path(cfg.out_dir) / "runs"
    return [key.name for key in run_keys(cfg) if not (runs / f"{key.name}.json").is_file()]


def train_command(cfg: SweepConfig, seeds: str) -> str:
    budgets = ",".join(map(str, cfg.budgets))
    return (f"sparsekit bench embeddings --dataset frappe --model {cfg.models[0]} --methods "
            f"{','.join(METHODS)} --budgets {budgets} --seeds {seeds} --min-epochs 10 --out {cfg.out_dir}")


def acceptance(best: pl.DataFrame, checked: dict[str, tuple[float, ...]]) -> list[dict[str, Any]]:
    entries = []
    for model, budget, gap in GAP_TARGETS:
        if budget not in checked.get(model, ()):
            continue
        row = best.filter((pl.col("model") == model) & (pl.col("budget") == budget))
        label = (f"best method at budget {budget}, {model}, retrained under sweep seeding {SEEDING} "
                 f"(chosen on val: {row['method'][0]}): full test AUC - its test AUC")
        entries.append(_entry(label, row["gap_to_full"][0], "<=", gap))
    return entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "embedding-sweep")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default=None,
                   help="comma-separated: recheck only these models' target cells (default: all of them)")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks" / "results" / "embedding_compression_recheck.json")
    args = p.parse_args()
    run = BenchmarkRun("embedding_compression_recheck", script="embedding_recheck")
    models = None if args.models is None else tuple(m for m in args.models.split(",") if m)
    cfgs = configs(args.work, tuple(int(s) for s in args.seeds.split(",")), models)
    missing = {cfg.models[0]: missing_runs(cfg) for cfg in cfgs}
    if any(missing.values()):
        sys.exit("\n".join(f"{len(names)} {model} runs are not finished in {args.work} (e.g. {names[:3]}); "
                           f"train them with `{train_command(cfg, args.seeds)}`"
                           for cfg, (model, names) in zip(cfgs, missing.items(), strict=True) if names))
    runs = pl.concat([run_sweep(cfg) for cfg in cfgs], how="diagonal_relaxed")  # all finished: nothing trains
    summary = summarize(runs)
    best = recommend(summary)
    checked = cells(models)
    metrics = {"protocol": {"cells": {m: list(b) for m, b in checked.items()}, "seeds": cfgs[0].seeds,
                            "max_epochs": cfgs[0].max_epochs, "patience": cfgs[0].patience,
                            "min_epochs": cfgs[0].min_epochs, "seeding": SEEDING,
                            "runs_trained_at": _run_commits(runs)},
               "recommendation": best.to_dicts(), "summary": summary.to_dicts()}
    run.report(metrics, acceptance(best, checked), args.out, indent=1, caveats=caveats(checked))


if __name__ == "__main__":
    main()
