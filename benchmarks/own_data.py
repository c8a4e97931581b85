"""Benchmark: the "bring your own data" loaders against the built-in ones, on the same real data.

Each shared dataset is exported the way a user would hand it over, read back through the generic loader,
and trained exactly as through the built-in loader, in the same run:

1. **Click table** (:mod:`recsys.data.ctr_table`): the MovieLens-100k CTR rows as a Parquet table of raw
   values (user, item, age in years, gender, occupation, zip region, genre, click), in the built-in
   loader's row order so the seeded 70/10/20 split picks the same rows. DeepFM test AUC through the
   table (train-split vocabularies, OOV ids, age cut at train quantiles) / through
   :func:`recsys.data.ctr.load_movielens_ctr` (metadata vocabularies, fixed age buckets), 3 seeds.
2. **Interaction log** (:mod:`recsys.data.interactions_table`): MovieLens-100k ratings >= 4 as a CSV log
   with timestamps, split per user in time. LightGCN Recall@20 / the most-popular-items baseline's on the
   same split.
3. **Graph file** (:func:`recsys.gcn.tasks.npz_task`): Cora (row-normalised features, public masks) as
   one ``.npz``. GraphSAGE test accuracy through the file / through :func:`recsys.gcn.tasks.planetoid_task`,
   3 seeds.

Writes ``benchmarks/results/own_data.json`` (../shared/docs/DESIGN.md §7) and prints it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import polars as pl
import torch

from benchmarks.acceptance import entry
from benchmarks.environment import BenchmarkRun
from recsys.data.ctr import SPLIT, CTRDataset, load_movielens_ctr
from recsys.data.libfm import split_rows
from sparsekit.atomic import atomic_path
from sparsekit.dataroot import dataset_path

RESULTS = ROOT / "benchmarks" / "results"
SEEDS = (0, 1, 2)
AGE_IN_BUCKET = (15, 21, 30, 40, 47, 53, 60)  # one age (years) inside each MovieLens-1M bucket


def _raw_rows(data: CTRDataset) -> pl.DataFrame:
    """The dataset's rows as raw values, back in the order the seeded split was cut from."""
    ids = np.concatenate([data.train.features, data.val.features, data.test.features])
    labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
    order = np.argsort(np.concatenate(split_rows(len(labels), SPLIT, data.info["seed"])))
    columns: dict[str, Any] = {"click": labels[order].astype(np.int64)}
    for spec, local in zip(data.schema.fields, (ids - data.schema.offsets).T, strict=True):
        names = AGE_IN_BUCKET if spec.bins is not None else spec.values
        columns[spec.name] = np.asarray([names[i] for i in local])[order]
    return pl.DataFrame(columns)


def export_click_table(work: Path) -> Path:
    """MovieLens-100k CTR rows as a Parquet click table (label ``click``, numeric ``age``)."""
    path = work / "movielens_clicks.parquet"
    with atomic_path(path) as tmp:
        _raw_rows(load_movielens_ctr(dataset_path("movielens-100k"), seed=0)).write_parquet(tmp)
    return path


def click_table(work: Path) -> dict[str, Any]:
    from recsys.data.ctr import load_ctr
    from recsys.data.ctr_table import TableCTRConfig
    from recsys.training.ctr import CTRTrainConfig, train_ctr

    root = dataset_path("movielens-100k")
    path = export_click_table(work)
    table = TableCTRConfig(label="click", numeric=("age",))
    out: dict[str, list[float]] = {"builtin_test_auc": [], "table_test_auc": []}
    for seed in SEEDS:
        for key, data in (("builtin_test_auc", load_movielens_ctr(root, seed=0)),
                          ("table_test_auc", load_ctr(path, seed=0, table=table))):
            config = CTRTrainConfig(model="deepfm", seed=seed, threads=1, progress=False)
            out[key].append(round(train_ctr(config, data).metrics["test_auc"], 5))
    return {**out, "ratio": float(np.mean(out["table_test_auc"]) / np.mean(out["builtin_test_auc"])),
            "rows": len(pl.read_parquet(path))}


def export_interaction_log(work: Path) -> Path:
    """MovieLens-100k ratings >= 4 as a CSV interaction log (columns ``user``, ``item``, ``ts``)."""
    root = dataset_path("movielens-100k")
    folder = root / "ml-100k" if (root / "ml-100k" / "u.data").is_file() else root
    ratings = pl.read_csv(folder / "u.data", separator="\t", has_header=False,
                          new_columns=["user", "item", "rating", "ts"])
    path = work / "movielens_log.csv"
    with atomic_path(path) as tmp:
        ratings.filter(pl.col("rating") >= 4).select("user", "item", "ts").write_csv(tmp)
    return path


def interaction_log(work: Path) -> dict[str, Any]:
    from recsys.data.interactions_table import InteractionsConfig, load_interactions_table
    from recsys.ranking import evaluate_ranking
    from recsys.training.cf import CFTrainConfig, train_cf

    path = export_interaction_log(work)
    data = load_interactions_table(path, InteractionsConfig(time="ts"))
    model, _ = train_cf(CFTrainConfig(model="lightgcn", epochs=20, seed=2020, progress=False), data)
    learned = evaluate_ranking(model.scorer(), data.train, data.test, k=20, device=model.device)
    counts = torch.from_numpy(np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32))
    popular = evaluate_ranking(lambda users: counts.expand(len(users), -1), data.train, data.test, k=20)
    return {"events": int(data.train.nnz + data.test.nnz), "users": data.num_users, "items": data.num_items,
            "lightgcn_recall20": round(learned.recall, 5), "lightgcn_ndcg20": round(learned.ndcg, 5),
            "popular_recall20": round(popular.recall, 5), "popular_ndcg20": round(popular.ndcg, 5),
            "ratio": learned.recall / popular.recall}


def export_graph_file(work: Path) -> Path:
    """Cora (row-normalised features, the public masks) as one ``.npz`` of PyG's array names."""
    from torch_geometric.transforms import NormalizeFeatures

    from recsys.data.planetoid import load_planetoid

    d = NormalizeFeatures()(load_planetoid(dataset_path("planetoid"), "Cora"))
    path = work / "cora.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.savez would append ".npz"
        np.savez(fh, x=d.x.numpy(), edge_index=d.edge_index.numpy(), y=d.y.numpy(),
                 train_mask=d.train_mask.numpy(), val_mask=d.val_mask.numpy(), test_mask=d.test_mask.numpy())
    return path


def graph_file(work: Path) -> dict[str, Any]:
    from recsys.gcn.tasks import npz_task, planetoid_task
    from recsys.gcn.training import GCNTrainConfig, train_gcn

    root = dataset_path("planetoid")
    path = export_graph_file(work)
    out: dict[str, list[float]] = {"builtin_test_acc": [], "file_test_acc": []}
    for seed in SEEDS:
        config = GCNTrainConfig(model="sage", epochs=30, seed=seed, device="cpu", progress=False)
        for key, task in (("builtin_test_acc", planetoid_task(root, "Cora", device="cpu")),
                          ("file_test_acc", npz_task(path, device="cpu"))):
            out[key].append(round(train_gcn(config, task).test_acc, 4))
    return {**out, "ratio": float(np.mean(out["file_test_acc"]) / np.mean(out["builtin_test_acc"]))}


def acceptance(ctr: dict[str, Any], cf: dict[str, Any], gcn: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        entry("MovieLens DeepFM test AUC, click table / built-in loader (mean of 3 seeds)", ctr["ratio"],
              ">=", 0.99, digits=4),
        entry("MovieLens log (temporal per-user split): LightGCN Recall@20 / most-popular Recall@20",
              cf["ratio"], ">", 1.0, digits=3),
        entry("Cora GraphSAGE test accuracy, .npz file / built-in Planetoid loader (mean of 3 seeds)",
              gcn["ratio"], ">=", 0.98, digits=4),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "own_data.json")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="only write the three files into DIR (to try the own-data commands on), no training")
    args = p.parse_args()
    torch.set_num_threads(1)
    missing = [n for n in ("movielens-100k", "planetoid") if dataset_path(n) is None]
    if missing:
        raise SystemExit(f"datasets {missing} not found under the data root (set SPARSEKIT_DATA)")
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        for export in (export_click_table, export_interaction_log, export_graph_file):
            print(export(args.export))
        return
    run = BenchmarkRun("own_data")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ctr, cf, gcn = click_table(work), interaction_log(work), graph_file(work)
    metrics = {"click_table": ctr, "interaction_log": cf, "graph_file": gcn}
    run.report(metrics, acceptance(ctr, cf, gcn), args.out)


if __name__ == "__main__":
    main()
