"""Benchmark: embedding compression methods as drop-in tables at fixed memory budgets (VLDB 2024 benchmark).

1. **Memory accounting.** Every method at every budget is built on Frappe's shape (5,382 features, 10
   fields, dim 16); ``memory_bytes()`` must equal the module's real parameter + buffer bytes and stay
   <= 1.02 x the budget (infeasible cells raise ``BudgetError`` and are listed).
2. **Frappe grid** (:mod:`embeddings.sweep`): DCNv2 x every method x budgets {0.5, 0.1, 0.01, 0.001} x
   3 seeds, plus DeepFM at budget 0.1, with the full table as baseline; early stopping on validation AUC
   (patience 2, never before epoch ``--min-epochs`` 10: with patience 2 alone, codebook tables (DPQ,
   MGQE) stopped at epoch 3-5 on a validation plateau in some seeds and not others, e.g. DeepFM + DPQ
   at 0.1 val AUC 0.928 / 0.941 / 0.928 by seed, while the same run left to train climbs past 0.94 by
   epoch 11; the warm-up was set from those validation curves).
   The best method per budget is chosen on validation AUC and its test AUC compared with the full table's.
   The compositions of :data:`embeddings.registry.COMPOSED` (QR or hashed rows stored as INT8 / INT4
   codes) run in the same grid; they are reported in a second choice that lets them compete, with
   entries of their own, never as one of the published methods.
   Resumable: runs already under ``--work`` are read back. DeepFM's dim-1 first-order table stays full
   precision and outside the budget (``first_order="free"``, as PEP and OptEmbed count);
   ``benchmarks/first_order_budget.py`` trains the DeepFM cells with it charged to the budget as well.
3. **Synthetic 20M-feature table at budget 0.01:** per method, the RSS it adds when built, lookup
   throughput relative to ``nn.EmbeddingBag`` at full size (1.28 GB), and DCNv2 training samples/s on
   planted-logistic rows (:mod:`recsys.data.synthetic_ctr`). Tables are timed as built for training;
   the compositions, trained as float rows but served as low-bit codes, are timed served as well.

Writes ``benchmarks/results/embedding_compression.{json,csv,md,png}`` (../shared/docs/DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import polars as pl
import torch

from benchmarks.acceptance import entry, not_measured
from benchmarks.environment import BenchmarkRun, write_result
from embeddings.registry import ADDED, COMPOSED
from embeddings.sweep import KINDS, SEEDING, SweepConfig, recommend, run_sweep, summarize, write_report
from embeddings.table import BUDGET_SLACK, BudgetError, table_class
from recsys.data.ctr import frappe_schema
from sparsekit.atomic import atomic_path
from sparsekit.provenance import commit

BUDGETS = (0.5, 0.1, 0.01, 0.001)
SYNTHETIC_FIELDS = (12_000_000, 5_000_000, 2_000_000, 900_000, 90_000, 10_000)  # 20M features
RESULTS = ROOT / "benchmarks" / "results"


def real_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def memory_accounting(dim: int = 16) -> dict[str, Any]:
    """Build every method at every budget on Frappe's shape; compare reported, real and allowed bytes."""
    schema = frappe_schema()
    cells = []
    for method in KINDS:
        for budget in BUDGETS:
            try:
                table = table_class(method)(schema.num_features, dim, budget, field_dims=schema.field_dims)
            except BudgetError as exc:
                cells.append({"method": method, "budget": budget, "status": "infeasible", "reason": str(exc)})
                continue
            served = table.finalize()
            cells.append({"method": method, "budget": budget, "status": "ok",
                          "reported": served.memory_bytes(), "real": real_bytes(served),
                          "allowed": served.budget_bytes(),
                          "ratio": served.memory_bytes() / max(served.budget_bytes(), 1)})
    ok = [c for c in cells if c["status"] == "ok"]
    return {"cells": cells, "mismatches": sum(c["reported"] != c["real"] for c in ok),
            "max_ratio": max(c["ratio"] for c in ok), "infeasible": [(c["method"], c["budget"])
                                                                  for c in cells if c["status"] != "ok"]}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _lookups_per_s(fn, ids: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        fn(ids)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(ids)
    return ids.numel() * repeats / (time.perf_counter() - start)


def _synthetic_rows(batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    from recsys.data.synthetic_ctr import SyntheticCTRConfig, synthetic_chunks

    config = SyntheticCTRConfig(field_dims=SYNTHETIC_FIELDS, num_rows=batch * (steps + 1), seed=0,
                                chunk_rows=batch * (steps + 1))
    features, labels = next(iter(synthetic_chunks(config)))[:2]
    return features, labels


def synthetic_one(method: str, budget: float, batch: int, repeats: int, steps: int) -> dict[str, Any]:
    """One method in a fresh process (so the RSS delta is its own): RSS added by building the table,
    lookups/s on ``[batch, 6]`` ids, and DCNv2 training samples/s (Adam, ``steps`` steps)."""
    from recsys.training.ctr import CTRTrainConfig, build_ctr_model

    features, labels = _synthetic_rows(batch, steps)
    ids = torch.from_numpy(np.ascontiguousarray(features[:batch]))
    n, dim = sum(SYNTHETIC_FIELDS), 16
    if method == "embeddingbag":  # the baseline: full size, one id per bag
        before = _rss()
        bag = torch.nn.EmbeddingBag(n, dim, mode="sum")
        offsets = torch.arange(ids.numel())
        speed = _lookups_per_s(lambda x: bag(x.reshape(-1), offsets), ids, repeats)
        return {"status": "ok", "rss_bytes": _rss() - before, "lookups_per_s": round(speed)}
    before = _rss()
    try:
        table = table_class(method)(n, dim, budget, field_dims=SYNTHETIC_FIELDS)
    except BudgetError as exc:
        return {"status": "infeasible", "reason": str(exc)}
    rss = _rss() - before
    speed = _lookups_per_s(table, ids, repeats)
    model = build_ctr_model(CTRTrainConfig(model="dcnv2"), list(SYNTHETIC_FIELDS), table)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        loss = loss_fn(model(torch.from_numpy(features[rows])), torch.from_numpy(labels[rows]))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    train_speed = steps * batch / (time.perf_counter() - start)
    out = {"status": "ok", "stored_bytes": table.memory_bytes(), "rss_bytes": rss,
           "lookups_per_s": round(speed), "train_samples_per_s": round(train_speed, 1)}
    if method in COMPOSED:  # trained as float rows, served as low-bit codes: time the served form too
        served = model.embedding.finalize()
        out |= {"served_stored_bytes": served.memory_bytes(),
                "served_lookups_per_s": round(_lookups_per_s(served, ids, repeats))}
    return out


def synthetic(methods: list[str], budget: float, batch: int, repeats: int, steps: int) -> dict[str, Any]:
    """:func:`synthetic_one` for the baseline and every method, each in its own spawned process."""
    out: dict[str, Any] = {"features": sum(SYNTHETIC_FIELDS), "budget": budget, "batch": batch,
                           "model": "dcnv2"}
    for method in ["embeddingbag", *methods]:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                out[method] = pool.submit(synthetic_one, method, budget, batch, repeats, steps).result()
            except Exception as exc:  # a method that fails at this scale is reported, not fatal
                out[method] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        if out[method].get("status") == "ok" and method != "embeddingbag":
            base = out["embeddingbag"]["lookups_per_s"]
            out[method]["lookup_speed_vs_embeddingbag"] = round(out[method]["lookups_per_s"] / base, 3)
            if "served_lookups_per_s" in out[method]:
                out[method]["served_lookup_speed_vs_embeddingbag"] = round(
                    out[method]["served_lookups_per_s"] / base, 3)
    return out


_entry = functools.partial(entry, digits=6)


# (model, budget, largest allowed full-table AUC minus the best method's)
GAP_TARGETS = (("dcnv2", 0.1, 0.003), ("dcnv2", 0.01, 0.01), ("deepfm", 0.1, 0.003))
BEST_PREFIX = "best method"
COMPOSED_PREFIX = "best table, compositions of two methods included"
VLDB_PREFIX = "best of the VLDB 2024 benchmark's methods (LSQ, added later, left out)"


def best_entries(best: pl.DataFrame, prefix: str = BEST_PREFIX) -> list[dict]:
    """Per (model, budget) of ``GAP_TARGETS``: the val-chosen method's test-AUC gap to the full table.

    The issue states the gap targets for "the best method at budget 0.1 / 0.01"; DeepFM runs at 0.1
    only, and is held to the same 0.003 there. ``best`` chooses among the published methods, or (with
    ``prefix`` :data:`COMPOSED_PREFIX`) among them and the compositions.
    """
    entries = []
    for model, budget, gap in GAP_TARGETS:
        row = best.filter((pl.col("model") == model) & (pl.col("budget") == budget))
        label = f"{prefix} at budget {budget}, {model} (chosen on val: {row['method'][0]})"
        entries.append(_entry(f"{label}: full test AUC - its test AUC", row["gap_to_full"][0], "<=", gap))
    return entries


FULL_LABEL = ("DCNv2 full-table test AUC (Frappe, mean of seeds; the issue asks for it to be reported: > 0.5 "
              "only checks that a model was trained)")
SYNTHETIC_LABEL = "synthetic 20M features at budget 0.01: methods measured (RSS, lookups/s, train/s)"
MEMORY_PREFIXES = ("memory_bytes()", "built tables", "trained serving tables")
BUILT_LABEL = ("built tables, as finalized for serving (a search or pruning method's training form holds "
               "full rows and is exempt, as the issue states): max memory_bytes / budget")


def synthetic_entry(syn: dict[str, Any]) -> dict:
    """Every method that fits budget 0.01 at 20M features must have been measured (infeasible ones,
    which raise BudgetError when built, are listed in metrics); a run without the section
    (``--skip-synthetic``) did not measure it, which is not a pass."""
    if not syn:
        return not_measured(SYNTHETIC_LABEL, ">=", "every method feasible there", "--skip-synthetic")
    methods = {m: r for m, r in syn.items() if m != "embeddingbag" and isinstance(r, dict)}
    feasible = [m for m, r in methods.items() if r.get("status") != "infeasible"]
    measured = [m for m in feasible if methods[m].get("status") == "ok"]
    return _entry(f"{SYNTHETIC_LABEL}, of the {len(feasible)} methods feasible there "
                  f"({len(methods) - len(feasible)} infeasible)", len(measured), ">=", len(feasible))


def findings(composed: pl.DataFrame | None, vldb: pl.DataFrame | None = None) -> list[dict]:
    """The compositions (:data:`embeddings.registry.COMPOSED`) are this project's, not published methods,
    and were added after the published methods missed targets: their choice is reported as findings,
    never as meeting the issue's criteria. LSQ (:data:`embeddings.registry.ADDED`) is a published method
    that competes in the acceptance entries, but was added after the VLDB 2024 benchmark's own methods
    missed DeepFM's target; the choice among those alone is reported here beside it."""
    entries = [] if vldb is None else best_entries(vldb, VLDB_PREFIX)
    return entries + ([] if composed is None else best_entries(composed, COMPOSED_PREFIX))


def caveats(protocol: dict[str, Any]) -> list[str]:
    """What a reader must know about runs trained by other code than this script runs now."""
    recorded = protocol.get("seeding", 1)  # folders from before it was recorded used seeding 1
    if recorded == SEEDING:
        return []
    commits = sorted(protocol["runs_trained_at"])
    return [f"the runs were trained under sweep seeding {recorded} (commits {commits}); this code's sweep "
            f"uses seeding {SEEDING} (embeddings/sweep.py), refuses to resume them and retrains every run, "
            "so the committed numbers cannot be reproduced by the current code until the grid is run again"]


def rescore(path: Path) -> None:
    """Rebuild a results file's acceptance entries, findings and caveats from its stored metrics."""
    result = json.loads(path.read_text())
    m = result["metrics"]
    kept = [e if not e["criterion"].startswith("built tables") else {**e, "criterion": BUILT_LABEL}
            for e in result["acceptance"] if e["criterion"].startswith(MEMORY_PREFIXES)]
    full = next(e["value"] for e in result["acceptance"] if e["criterion"].startswith("DCNv2 full-table"))
    result["acceptance"] = [*kept, _entry(FULL_LABEL, full, ">", 0.5),
                            *best_entries(pl.DataFrame(m["recommendation"])), synthetic_entry(m["synthetic"])]
    composed, vldb = m.get("recommendation_composed"), m.get("recommendation_vldb")
    result["findings"] = findings(None if composed is None else pl.DataFrame(composed),
                                  None if vldb is None else pl.DataFrame(vldb))
    result["caveats"] = caveats(m["protocol"])
    result["rescored_commit"] = commit()
    write_result(path, result, indent=1)
    print(json.dumps(result["acceptance"]))


def _has_compositions(runs: pl.DataFrame) -> bool:
    return bool(runs["method"].is_in(list(COMPOSED)).any())


def acceptance(mem: dict[str, Any], best: pl.DataFrame, runs: pl.DataFrame,
               syn: dict[str, Any]) -> list[dict]:
    ok = runs.filter(pl.col("status") == "ok")
    acc = [_entry("memory_bytes() == real parameter + buffer bytes: mismatching (method, budget) cells",
                  mem["mismatches"], "<=", 0),
           _entry(BUILT_LABEL, mem["max_ratio"], "<=", BUDGET_SLACK),
           _entry("trained serving tables: max stored bytes / budget",
                  float((ok.filter(pl.col("method") != "full")["stored_bytes"]
                         / ok.filter(pl.col("method") != "full")["budget_bytes"]).max()), "<=", BUDGET_SLACK)]
    full = ok.filter((pl.col("method") == "full") & (pl.col("model") == "dcnv2"))["test_auc"].mean()
    acc.append(_entry(FULL_LABEL, full, ">", 0.5))
    acc += best_entries(best)
    acc.append(synthetic_entry(syn))
    return acc


def _run_commits(runs: pl.DataFrame) -> dict[str, int]:
    """How many finished runs each commit trained (runs from before commits were recorded: "unrecorded")."""
    if "commit" not in runs.columns:
        return {"unrecorded": int((runs["status"] == "ok").sum())}
    ok = runs.filter(pl.col("status") == "ok")
    counts = ok["commit"].fill_null("unrecorded").value_counts()
    return {str(c): int(n) for c, n in counts.iter_rows()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "embedding-sweep")
    p.add_argument("--methods", default=",".join(KINDS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--min-epochs", type=int, default=10, help="never stop early before this epoch")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, one process each")
    p.add_argument("--synthetic-batch", type=int, default=4096)
    p.add_argument("--synthetic-steps", type=int, default=20)
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--rescore", action="store_true",
                   help="only rebuild the acceptance entries, findings and caveats of "
                        "--out/embedding_compression.json from its stored metrics")
    args = p.parse_args()
    if args.rescore:
        rescore(args.out / "embedding_compression.json")
        return
    run = BenchmarkRun("embedding_compression")
    methods = tuple(m for m in args.methods.split(",") if m)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    mem = memory_accounting()
    grid = SweepConfig(models=("dcnv2",), methods=methods, budgets=BUDGETS, seeds=seeds,
                       out_dir=str(args.work), max_epochs=args.max_epochs, min_epochs=args.min_epochs,
                       workers=args.workers)
    deepfm = SweepConfig(models=("deepfm",), methods=methods, budgets=(0.1,), seeds=seeds,
                         out_dir=str(args.work), max_epochs=args.max_epochs, min_epochs=args.min_epochs,
                         workers=args.workers)
    runs = pl.concat([run_sweep(grid), run_sweep(deepfm)], how="diagonal_relaxed")
    paths = write_report(runs, args.work / "report")
    args.out.mkdir(parents=True, exist_ok=True)
    for key in ("csv", "md", "png"):
        with atomic_path(args.out / paths[key].name) as tmp:
            shutil.copyfile(paths[key], tmp)
    summary = summarize(runs)
    best, composed = recommend(summary), recommend(summary, composed=True)
    vldb = recommend(summary, exclude=ADDED) if runs["method"].is_in(list(ADDED)).any() else None
    torch.set_num_threads(os.cpu_count() or 1)
    syn = {} if args.skip_synthetic else synthetic(list(methods), 0.01, args.synthetic_batch, 5,
                                                   args.synthetic_steps)
    metrics = {"protocol": {"max_epochs": args.max_epochs, "patience": grid.patience,
                            "min_epochs": args.min_epochs, "seeding": SEEDING,
                            "runs_trained_at": _run_commits(runs)},
               "memory_accounting": mem, "recommendation": best.to_dicts(),
               **({"recommendation_composed": composed.to_dicts()} if _has_compositions(runs) else {}),
               **({} if vldb is None else {"recommendation_vldb": vldb.to_dicts()}),
               "summary": summary.to_dicts(), "synthetic": syn}
    run.report(metrics, acceptance(mem, best, runs, syn), args.out / "embedding_compression.json", indent=1,
               findings=findings(composed if _has_compositions(runs) else None, vldb),
               caveats=caveats(metrics["protocol"]))


if __name__ == "__main__":
    main()
