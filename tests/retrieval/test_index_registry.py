"""The index registry: every kind's opener, builder and config resolve, and unknown names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.index import FORMATS, KINDS, REGISTRY, build_index
from retrieval.index.hybrid import HybridConfig


def test_every_registered_kind_resolves() -> None:
    for kind in REGISTRY:
        assert callable(kind.attr(kind.opener).open)
        if kind.name:
            assert callable(kind.attr(kind.builder))
        if kind.config:
            assert kind.attr(kind.config)() is not None
    assert set(KINDS) == {"bm25", "sparse", "dense", "bigranular", "hybrid"}
    assert len(FORMATS) == len(REGISTRY)
    assert KINDS["hybrid"].attr("HybridConfig") is HybridConfig


def test_build_index_refuses_an_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown index kind 'faiss'"):
        build_index("faiss", tmp_path / "corpus.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
