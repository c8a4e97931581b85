"""Chunking for RAG: every chunk fits the token budget, text is kept, ids are stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.data.beir import Doc
from retrieval.rag.chunking import chunk_document, chunk_text, iter_chunks
from sparsekit.errors import InputError


def words(text: str) -> int:
    return len(text.split())


def test_sentences_are_packed_under_the_budget(word_tokenizer) -> None:
    text = " ".join(f"Sentence number {i} has six words." for i in range(20))
    chunks = chunk_document(Doc("d1", "A title", text), word_tokenizer, max_tokens=20)
    assert len(chunks) > 1
    for chunk in chunks:
        assert words(chunk_text(chunk.title, chunk.text)) <= 20
        assert chunk.tokens == words(chunk_text(chunk.title, chunk.text))
    # whole sentences only, in order, nothing lost
    assert " ".join(c.text for c in chunks) == text
    assert [c.id for c in chunks] == [f"d1#{i}" for i in range(len(chunks))]


def test_an_over_long_sentence_is_cut_at_token_boundaries(word_tokenizer) -> None:
    long = " ".join(f"w{i}" for i in range(50)) + "."
    chunks = chunk_document(Doc("d", "", long), word_tokenizer, max_tokens=16)
    assert all(words(c.text) <= 16 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == long.split()


def test_a_huge_title_is_left_out_of_the_chunks(word_tokenizer) -> None:
    chunks = chunk_document(Doc("d", " ".join(["t"] * 30), "Short text."), word_tokenizer, max_tokens=32)
    assert [c.title for c in chunks] == [""]


def test_empty_document_gives_no_chunks(word_tokenizer) -> None:
    assert chunk_document(Doc("d", "Title", ""), word_tokenizer, max_tokens=32) == []


def test_iter_chunks_streams_a_corpus_and_rejects_a_tiny_budget(word_tokenizer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": "a", "title": "T", "text": "One. Two three."}, {"_id": "b", "title": "", "text": "Four."}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [c.id for c in iter_chunks(corpus, word_tokenizer, 64)] == ["a#0", "b#0"]
    with pytest.raises(InputError, match="max_tokens"):
        list(iter_chunks(corpus, word_tokenizer, 4))
