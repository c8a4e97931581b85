"""benchmarks/sparse_scifact.py measures a reused model only when it was trained with the recipe asked for."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.sparse_scifact import ABLATIONS, check_recipe, main_recipe
from retrieval.training.sparse import SparseTrainConfig


def _model(tmp_path: Path, cfg: SparseTrainConfig) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    training = {**json.loads(json.dumps(asdict(cfg), default=str)), "data": "/elsewhere", "steps": 300}
    (model / "manifest.json").write_text(json.dumps({"params": {"training": training}}))
    return model


def test_a_model_of_the_recipe_is_reused_and_one_of_another_is_refused(tmp_path: Path) -> None:
    main = SparseTrainConfig(data="d", out="o", work_dir="w", dev_eval_start=False, **main_recipe(300))
    model = _model(tmp_path, main)
    check_recipe(model, SparseTrainConfig(data="other", out="x", **main_recipe(300)))  # paths do not count
    ablation = SparseTrainConfig(data="d", out="o", **{**main_recipe(300), **ABLATIONS["plain_flops"]})
    with pytest.raises(SystemExit, match="idf_aware"):
        check_recipe(model, ablation)


def test_a_run_that_skips_sections_has_no_entries_for_them() -> None:
    from benchmarks.sparse_scifact import acceptance

    measured = {"test": {"ndcg@10": 0.72}, "training": {"wall_h": 0.5}}
    full = [e["criterion"] for e in acceptance(measured)]

    def section(c: str) -> bool:
        return c.startswith("ablations measured") or "synthetic corpus" in c

    assert sum(map(section, full)) == 2
    partial = [e["criterion"] for e in acceptance(measured | {"skipped": ["ablations", "scale"]})]
    assert partial == [c for c in full if not section(c)]
    assert len(partial) == 2  # the headline and the training time


def test_redoing_the_ablations_of_a_run_that_skipped_them_scores_them(tmp_path: Path, monkeypatch) -> None:
    """A headline re-measure with --skip-ablations followed by --redo-ablations: the ablations are then
    measured, so they are no longer skipped and have their acceptance entry."""
    from argparse import Namespace

    import benchmarks.sparse_scifact as bench

    block = {"steps": bench.STEPS, "main": {"ndcg@10": 0.7}, "significance": {}}
    monkeypatch.setattr(bench, "ablations", lambda data, runs, model: {f"{bench.STEPS}_steps": block})
    out = tmp_path / "sparse_scifact.json"
    metrics = {"training": {"steps": bench.STEPS, "wall_h": 0.5}, "test": {"ndcg@10": 0.72},
               "skipped": ["scale", "ablations"]}
    out.write_text(json.dumps({"metrics": metrics, "acceptance": bench.acceptance(metrics)}))
    bench.redo_ablations(Namespace(out=out, runs=tmp_path, model=tmp_path / "model"), tmp_path)
    stored = json.loads(out.read_text())
    assert stored["metrics"]["skipped"] == ["scale"]
    criteria = [e["criterion"] for e in stored["acceptance"]]
    assert any(c.startswith("ablations measured") for c in criteria)
    assert not any("synthetic corpus" in c for c in criteria)
    # rescoring a file whose skipped list still names a measured section keeps its entry too
    kept = bench.acceptance({**metrics, "ablations": {f"{bench.STEPS}_steps": block}})
    assert any(e["criterion"].startswith("ablations measured") for e in kept)
