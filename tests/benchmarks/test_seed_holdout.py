"""benchmarks/seed_holdout.py re-measures the grid's own choices, only on seeds the grid never used."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import seed_holdout
from sparsekit.errors import InputError


def test_choices_come_from_the_grid_results_file(tmp_path: Path) -> None:
    rows = [{"model": "dcnv2", "budget": 0.1, "method": "dpq", "gap_to_full": 0.0007},
            {"model": "deepfm", "budget": 0.1, "method": "qr", "gap_to_full": 0.0064}]
    path = tmp_path / "embedding_compression.json"
    path.write_text(json.dumps({"metrics": {"recommendation": rows, "summary": []}}))
    got = seed_holdout.grid_choices(seed_holdout.grid_metrics(path))
    assert got[("dcnv2", 0.1)]["method"] == "dpq" and got[("deepfm", 0.1)]["method"] == "qr"


def test_pooling_weights_every_finished_run_once() -> None:
    grid, held = {"test_auc": 0.95, "n_ok": 3}, {"test_auc": 0.94, "n_ok": 1}
    assert seed_holdout.pooled(grid, held) == pytest.approx((3 * 0.95 + 0.94) / 4)


def test_a_missing_grid_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.json.*embedding_compression\.py first"):
        seed_holdout.grid_metrics(tmp_path / "nope.json")


def test_seeds_the_grid_trained_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["seed_holdout.py", "--seeds", "2,3", "--out", str(tmp_path)])
    with pytest.raises(InputError, match="not held out"):
        seed_holdout.main()
    assert not any(tmp_path.iterdir())  # refused before anything was trained or written


def test_a_different_composition_inclusive_pick_is_remeasured_too(tmp_path: Path) -> None:
    summary = [{"model": "dcnv2", "method": m, "budget": b} for m, b in (("full", 1.0), ("dpq", 0.01))]
    single = [{"model": "dcnv2", "budget": 0.01, "method": "dpq"},
              {"model": "dcnv2", "budget": 0.1, "method": "lsq"},
              {"model": "deepfm", "budget": 0.1, "method": "lsq"}]
    composed = [{**single[0], "method": "qr+int4"}, single[1], single[2]]
    metrics = {"recommendation": single, "recommendation_composed": composed, "summary": summary}
    source = seed_holdout.grid_source(metrics, tmp_path)
    assert [(pool, r["method"]) for pool, r in source.picks[("dcnv2", 0.01)]] == [
        ("method", "dpq"), (seed_holdout.COMPOSED, "qr+int4")]
    assert [r["method"] for _, r in source.picks[("dcnv2", 0.1)]] == ["lsq"]  # the same table once
    assert source.first_order == "free" and ("dcnv2", "full", 1.0) in source.summary
    alone = seed_holdout.grid_source({"recommendation": single, "summary": summary}, tmp_path)
    assert [r["method"] for _, r in alone.picks[("dcnv2", 0.01)]] == ["dpq"]


def test_the_first_order_cell_comes_from_its_own_results_file(tmp_path: Path) -> None:
    pick = {"model": "deepfm", "budget": 0.1, "method": "lsq", "gap_to_full": 0.0016}
    metrics = {"model": "deepfm", "budget": 0.1,
               "recommendation": {"projected": pick, "projected_compositions_included": pick,
                                  "counted": {**pick, "method": "qr"}},
               "summary": [{"first_order": mode, "method": m, "test_auc": 0.95, "n_ok": 3}
                           for mode in ("counted", "projected") for m in ("full", "lsq")]}
    source = seed_holdout.first_order_source(metrics, tmp_path)
    assert source.first_order == "projected"
    assert [r["method"] for _, r in source.picks[("deepfm", 0.1)]] == ["lsq"]
    assert set(source.summary) == {("deepfm", "full", 1.0), ("deepfm", "lsq", 0.1)}
    cell = {"source": source.name, "model": "deepfm", "budget": 0.1}
    assert "first-order weights projected" in seed_holdout.where(cell)
