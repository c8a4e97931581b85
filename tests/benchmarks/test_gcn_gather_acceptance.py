"""benchmarks/gcn_gather.py's acceptance: a criterion the run could not measure is listed, not a pass."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.gcn_gather import acceptance

RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gcn_gather.json"


def test_a_run_without_the_planetoid_data_lists_cora_as_not_measured() -> None:
    metrics = json.loads(RESULT.read_text())["metrics"]
    metrics["cora"] = {"skipped": "planetoid data not found"}
    cora = [e for e in acceptance(metrics) if e["criterion"].startswith("Cora")]
    assert len(cora) == 1 and cora[0]["value"] is None and cora[0]["pass"] is False
    assert "planetoid data not found" in cora[0]["criterion"]


def test_the_stored_run_rescores_to_its_stored_entries() -> None:
    stored = json.loads(RESULT.read_text())
    assert acceptance(stored["metrics"]) == stored["acceptance"]
