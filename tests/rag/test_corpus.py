"""The RAG corpus artifact: chunks + a BM25 index over them, built atomically, retrieved in rank order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.rag.corpus import RagCorpus, build_rag_corpus
from sparsekit.errors import ArtifactError, InputError

pytestmark = pytest.mark.java


DOCS = [
    {"_id": "aspirin", "title": "Aspirin", "text": "Aspirin lowers the risk of heart attacks. " * 6},
    {"_id": "sleep", "title": "Sleep", "text": "Short sleep raises the risk of obesity in adults."},
]


@pytest.fixture(scope="module")
def built(word_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rag")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return build_rag_corpus(corpus, root / "rag", word_tokenizer, max_tokens=20, progress=False)


def test_build_and_retrieve(built: Path) -> None:
    rag = RagCorpus.open(built)
    assert len(rag) > 2  # the aspirin document is cut into several chunks
    assert all(cid.startswith(("aspirin#", "sleep#")) for cid in rag.chunks)
    hits = rag.retrieve("does short sleep cause obesity", k=2)
    assert hits[0].id == "sleep#0"
    assert hits[0].text.startswith("Sleep\n")
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert rag.retrieve("zebra quantum", k=3) == []


def test_bad_input_and_no_overwrite(word_tokenizer, built: Path, tmp_path: Path) -> None:
    rag = RagCorpus.open(built)
    with pytest.raises(InputError, match="question"):
        rag.retrieve("  ")
    with pytest.raises(InputError, match="k"):
        rag.retrieve("sleep", k=0)
    with pytest.raises(ArtifactError, match="already exists"):
        build_rag_corpus(built / "corpus.jsonl", built, word_tokenizer, progress=False)
    with pytest.raises(InputError, match="not found"):
        build_rag_corpus(tmp_path / "missing.jsonl", tmp_path / "out", word_tokenizer)
    assert RagCorpus.open(built).chunks == rag.chunks  # the published corpus is untouched


def test_a_sparse_corpus_without_a_trained_model_fails_before_chunking(word_tokenizer, built: Path,
                                                                        tmp_path: Path) -> None:
    """The model is checked first: chunking a large corpus, then failing, wastes minutes."""
    class Counting:
        calls = 0

        def __getattr__(self, name):  # any use of the tokenizer counts as chunking work
            Counting.calls += 1
            return getattr(word_tokenizer, name)

    with pytest.raises(ValueError, match="needs a trained model"):
        build_rag_corpus(built / "corpus.jsonl", tmp_path / "a", Counting(), kind="sparse", progress=False)
    with pytest.raises(ArtifactError, match="sparse-doc-encoder"):  # a rag-corpus is not a model
        build_rag_corpus(built / "corpus.jsonl", tmp_path / "b", Counting(), kind="sparse", model=built,
                         progress=False)
    assert Counting.calls == 0 and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
