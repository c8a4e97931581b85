"""The result envelope every benchmark writes (../shared/docs/DESIGN.md §7): ``benchmarks/environment.py``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.environment import BenchmarkRun
from sparsekit import provenance


@pytest.fixture
def pinned_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    provenance.commit.cache_clear()
    monkeypatch.setenv("SPARSEKIT_COMMIT", "c0ffee")
    yield
    provenance.commit.cache_clear()


def test_the_commit_is_read_when_the_run_starts(pinned_commit: None, monkeypatch: pytest.MonkeyPatch) -> None:
    run = BenchmarkRun("demo")
    provenance.commit.cache_clear()
    monkeypatch.setenv("SPARSEKIT_COMMIT", "later")  # a commit made while the run goes on
    assert run.envelope({}, [])["commit"] == "c0ffee"


def test_report_writes_the_envelope_and_prints_it_on_one_line(
        pinned_commit: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["somewhere/dsl_gowalla.py", "--tune", "--out", "a b.json"])
    run = BenchmarkRun("dsl_gowalla_tune", script="dsl_gowalla")
    acceptance = [{"criterion": "x", "value": 1.0, "op": ">=", "target": 0.5, "pass": True}]
    out = tmp_path / "results" / "dsl_gowalla_tune.json"
    result = run.report({"auc": 0.9}, acceptance, out)
    stored = json.loads(out.read_text())
    assert stored == result
    assert list(stored) == ["benchmark", "commit", "machine", "command", "wall_s", "metrics", "acceptance"]
    assert stored["benchmark"] == "dsl_gowalla_tune"
    assert stored["command"] == "python benchmarks/dsl_gowalla.py --tune --out 'a b.json'"
    assert stored["wall_s"] >= 0 and stored["metrics"] == {"auc": 0.9} and stored["acceptance"] == acceptance
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and json.loads(printed[0]) == result
    assert [p.name for p in out.parent.iterdir()] == ["dsl_gowalla_tune.json"]  # no temporary file left


def test_report_without_a_path_only_prints(pinned_commit: None, capsys: pytest.CaptureFixture[str]) -> None:
    result = BenchmarkRun("quick").report({}, [], None)
    assert json.loads(capsys.readouterr().out) == result
    assert result["commit"] == "c0ffee"
