"""Which commit results are attributed to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sparsekit import provenance


def test_commit_is_a_hash_or_uncommitted_and_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    provenance.commit.cache_clear()
    monkeypatch.delenv("SPARSEKIT_COMMIT", raising=False)
    found = provenance.commit()
    assert found == "uncommitted" or re.fullmatch(r"[0-9a-f]{40}(\+dirty\.[0-9a-f]{12})?", found)
    provenance.commit.cache_clear()
    monkeypatch.setenv("SPARSEKIT_COMMIT", "abc123")
    assert provenance.commit() == "abc123"
    monkeypatch.setenv("SPARSEKIT_COMMIT", "def456")
    assert provenance.commit() == "abc123"  # read once per process
    provenance.commit.cache_clear()


def test_a_checkout_with_changed_tracked_files_is_marked_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "run.json").write_text("{}")
    git("add", "code.py", "benchmarks")
    git("commit", "-qm", "one")
    head = provenance.describe(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    (tmp_path / "output.json").write_text("{}")  # untracked: not a change of the code
    assert provenance.describe(tmp_path) == head
    (tmp_path / "benchmarks" / "results" / "run.json").write_text('{"rescored": 1}')  # an output, not code
    assert provenance.describe(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = provenance.describe(tmp_path)
    assert re.fullmatch(head + r"\+dirty\.[0-9a-f]{12}", dirty)
    (tmp_path / "code.py").write_text("x = 3\n")
    assert provenance.describe(tmp_path) != dirty  # another change, another digest
