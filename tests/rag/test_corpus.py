"""The RAG corpus artifact: chunks + a BM25 index over them, built atomically, retrieved in rank order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from retrieval.rag.corpus import RagCorpus, build_rag_corpus
from sparsekit.errors import ArtifactError, InputError

pytestmark = pytest.mark.java


class SizedWordTokenizer:
    """One token per whitespace-separated word, with offsets and a size (the HF calls the corpus uses)."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        out = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def __len__(self) -> int:
        return 0


DOCS = [
    {"_id": "aspirin", "title": "Aspirin", "text": "Aspirin lowers the risk of heart attacks. " * 6},
    {"_id": "sleep", "title": "Sleep", "text": "Short sleep raises the risk of obesity in adults."},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rag")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return build_rag_corpus(corpus, root / "rag", SizedWordTokenizer(), max_tokens=20, progress=False)


def test_build_and_retrieve(built: Path) -> None:
    rag = RagCorpus.open(built)
    assert len(rag) > 2  # the aspirin document is cut into several chunks
    assert all(cid.startswith(("aspirin#", "sleep#")) for cid in rag.chunks)
    hits = rag.retrieve("does short sleep cause obesity", k=2)
    assert hits[0].id == "sleep#0"
    assert hits[0].text.startswith("Sleep\n")
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert rag.retrieve("zebra quantum", k=3) == []


def test_bad_input_and_no_overwrite(built: Path, tmp_path: Path) -> None:
    rag = RagCorpus.open(built)
    with pytest.raises(InputError, match="question"):
        rag.retrieve("  ")
    with pytest.raises(InputError, match="k"):
        rag.retrieve("sleep", k=0)
    with pytest.raises(ArtifactError, match="already exists"):
        build_rag_corpus(built / "corpus.jsonl", built, SizedWordTokenizer(), progress=False)
    with pytest.raises(InputError, match="not found"):
        build_rag_corpus(tmp_path / "missing.jsonl", tmp_path / "out", SizedWordTokenizer())
    assert RagCorpus.open(built).chunks == rag.chunks  # the published corpus is untouched
