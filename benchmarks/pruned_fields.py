"""Analysis: why magnitude-pruned tables (PEP, DeepLight) collapse under DCNv2 on Frappe but not under DeepFM.

The embedding-compression grid (``benchmarks/embedding_compression.py``) shows PEP and DeepLight at budget
0.1 far below full under DCNv2, yet close to full under DeepFM. This script measures the two causes on
the validation split only (no test numbers), with the grid's training settings:

1. **Magnitude is not importance here.** A full table trained with Adam and the trainer's per-batch L2 on
   the rows a batch reads: mean ``|w|`` per feature, by how often the feature occurs in train. Frequent
   features (Frappe's low-cardinality context fields: daytime, weekday, weather, ...) end with the
   *smallest* weights, so keeping the budget's largest weights drops them.
2. **What pruning keeps, per field.** For each model x method at the budget: the share of looked-up
   embedding values (val rows) that are non-zero in each field, and val AUC.
3. **DeepFM's first-order table.** DeepFM (and WDL) add ``sum_f w[x_f]`` from a dim-1 table of one float
   per feature, kept full precision and outside the budget (the convention of PEP / OptEmbed, which count
   the dim-``d`` table only: 21.5 KB on Frappe, 6.25% of the full dim-16 table). Val AUC of the trained
   DeepFM with that table zeroed shows how much of the pruned model's accuracy it carries.

Writes ``benchmarks/results/pruned_fields.json`` and prints it. The issue sets no criterion for this
analysis; its ``acceptance`` entries check the three findings the README states, on this run's numbers
(each can fail): frequent features hold smaller weights than every rarer bucket, pruning leaves whole
fields without a non-zero value, and zeroing DeepFM's first-order table costs validation AUC.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

import embeddings.registry  # noqa: F401  (registers every table kind)
from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from embeddings.sweep import (
    RunKey,
    SweepConfig,
    first_order_bytes,
    load_dataset,
    seeded_table,
    train_config,
)
from recsys.data.ctr import CTRDataset
from recsys.training.ctr import evaluate_ctr, train_ctr

RESULTS = ROOT / "benchmarks" / "results"
FREQUENCY_BUCKETS = (1, 5, 20, 100, 1000)  # train occurrences: [1, 5), [5, 20), ..., [1000, inf)


def train(data: CTRDataset, model: str, method: str, budget: float, seed: int, grid: SweepConfig) -> Any:
    """One run trained exactly as the sweep trains it (:func:`embeddings.sweep.run_one`), model kept."""
    table = seeded_table(method, data, grid.embed_dim, budget, seed)
    return train_ctr(train_config(RunKey(model, method, budget, seed), grid), data, table)


def magnitude_by_frequency(data: CTRDataset, weight: torch.Tensor) -> list[dict[str, Any]]:
    """Mean ``|w|`` of the full table's features, bucketed by their train occurrence count, with each
    bucket's features counted per field."""
    counts = np.bincount(data.train.features.reshape(-1), minlength=data.num_features)
    size = weight.detach().abs().mean(dim=1).cpu().numpy()
    field = np.repeat(np.arange(len(data.field_dims)), data.field_dims)  # feature id -> its field
    edges = (*FREQUENCY_BUCKETS, np.inf)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        chosen = (counts >= lo) & (counts < hi)
        per_field = np.bincount(field[chosen], minlength=len(data.field_dims))
        rows.append({"train_count": f"[{lo}, {hi})", "features": int(chosen.sum()),
                     "features_by_field": dict(zip(data.field_names, per_field.tolist(), strict=True)),
                     "mean_abs_weight": round(float(size[chosen].mean()), 4) if chosen.any() else None})
    return rows


def nonzero_by_field(data: CTRDataset, model: torch.nn.Module) -> list[float]:
    """Share of non-zero embedding values per field over the val rows (what serving reads)."""
    ids = torch.from_numpy(np.ascontiguousarray(data.val.features))
    with torch.no_grad():
        emb = model.embedding(ids)  # [rows, fields, dim]
    return [round(float(v), 4) for v in (emb != 0).float().mean(dim=(0, 2))]


def without_first_order(data: CTRDataset, model: torch.nn.Module) -> float:
    """Val AUC of a Wide&Deep-family model with its first-order weights zeroed (no retraining)."""
    first = next(p for p in model.first_order.parameters())
    kept = first.detach().clone()
    with torch.no_grad():
        first.zero_()
        auc = evaluate_ctr(model, data.val)["auc"]
        first.copy_(kept)
    return auc


def findings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The README's three claims as acceptance entries, judged on this run's metrics."""
    buckets = [b["mean_abs_weight"] for b in metrics["full_table"]["mean_abs_weight_by_train_count"]
               if b["mean_abs_weight"] is not None]
    acc = [entry("full table: mean |w| of the most frequent features / smallest mean |w| of a rarer bucket",
                 buckets[-1] / min(buckets[:-1]), "<", 1.0, digits=4)]
    for run in metrics["pruned"]:
        name = f"{run['model']} + {run['method']} at budget {metrics['budget']}"
        acc.append(entry(f"{name}: fields left with no non-zero embedding value",
                         sum(v == 0 for v in run["nonzero_share_by_field"]), ">=", 1))
        if "val_auc_first_order_zeroed" in run:
            acc.append(entry(f"{name}: val AUC with the first-order table zeroed - val AUC",
                             run["val_auc_first_order_zeroed"] - run["val_auc"], "<", 0.0, digits=4))
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--methods", default="pep,deeplight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "pruned_fields.json")
    args = p.parse_args()
    run = BenchmarkRun("pruned_fields")
    grid = SweepConfig(min_epochs=10)  # the grid's settings (benchmarks/embedding_compression.py)
    data = load_dataset(grid)
    full = train(data, "dcnv2", "full", 1.0, args.seed, grid)
    runs = []
    for model in ("dcnv2", "deepfm"):
        for method in (m for m in args.methods.split(",") if m):
            result = train(data, model, method, args.budget, args.seed, grid)
            row = {"model": model, "method": method, "val_auc": round(result.metrics["val_auc"], 4),
                   "best_epoch": result.best_epoch,
                   "nonzero_share_by_field": nonzero_by_field(data, result.model)}
            if getattr(result.model, "first_order", None) is not None:
                row["val_auc_first_order_zeroed"] = round(without_first_order(data, result.model), 4)
            runs.append(row)
            print(json.dumps(row), file=sys.stderr)
    metrics = {
        "dataset": "frappe", "split": "val", "seed": args.seed, "budget": args.budget,
        "fields": data.field_names, "field_dims": list(data.field_dims),
        "full_table": {"model": "dcnv2", "val_auc": round(full.metrics["val_auc"], 4),
                       "mean_abs_weight_by_train_count": magnitude_by_frequency(
                           data, full.model.embedding.weight)},
        "first_order_bytes": first_order_bytes("deepfm", data.num_features, data.field_dims),
        "full_table_bytes": 4 * data.num_features * grid.embed_dim,
        "pruned": runs,
    }
    run.report(metrics, findings(metrics), args.out)


if __name__ == "__main__":
    main()
