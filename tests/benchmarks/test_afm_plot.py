"""The AFM rank-sweep plot of ``benchmarks/afm_ctr.py``, drawn from stored metrics (``--replot``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.afm_ctr import plot

ROOT = Path(__file__).resolve().parents[2]


def _sweep_entry(rank: int, ratio: float, delta: float) -> dict:
    return {"rank": rank, "param_ratio": ratio, "val_auc_delta": delta, "test_auc_delta": delta,
            "test_auc_delta_per_seed": [delta - 1e-4, delta + 1e-4]}


def _metrics(panels: int) -> dict:
    sweep = [_sweep_entry(r, 64 / r, -0.004 / r) for r in (2, 8, 32)]
    result = {"model": "deepfm", "chosen_rank": 8, "chosen": sweep[1], "rank_sweep": sweep}
    return {"auc_tolerance": 0.001, "datasets": {f"set{i}": [result] for i in range(panels)}}


def test_plot_writes_one_png_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "afm_ctr.png"
    plot(_metrics(3), target)  # an odd panel count leaves one grid cell empty
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["afm_ctr.png"]


def test_replot_redraws_from_the_results_file(tmp_path: Path) -> None:
    results = tmp_path / "afm.json"
    results.write_text(json.dumps({"metrics": _metrics(1), "acceptance": []}))
    script = ROOT / "benchmarks" / "afm_ctr.py"
    subprocess.run([sys.executable, str(script), "--replot", "--out", str(results)], check=True,
                   capture_output=True)
    assert (tmp_path / "afm.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(results.read_text())["acceptance"] == []  # the results file is only read
