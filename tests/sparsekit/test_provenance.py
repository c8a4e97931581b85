"""Which commit results are attributed to."""

from __future__ import annotations

import re

import pytest

from sparsekit import provenance


def test_commit_is_a_hash_or_uncommitted_and_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    provenance.commit.cache_clear()
    monkeypatch.delenv("SPARSEKIT_COMMIT", raising=False)
    found = provenance.commit()
    assert found == "uncommitted" or re.fullmatch(r"[0-9a-f]{40}", found)
    provenance.commit.cache_clear()
    monkeypatch.setenv("SPARSEKIT_COMMIT", "abc123")
    assert provenance.commit() == "abc123"
    monkeypatch.setenv("SPARSEKIT_COMMIT", "def456")
    assert provenance.commit() == "abc123"  # read once per process
    provenance.commit.cache_clear()
