"""Split a BEIR corpus into retrieval chunks of at most ``max_tokens`` LLM tokens (RAG chunking).

A chunk is what the RAG generator sees as one unit of context and what the chunk cache
(:mod:`retrieval.rag.chunk_cache`, Cache-Craft, SIGMOD 2025) keys its KV by, so its length is
counted in the *generator's* tokens, not words. Each document (title + text) is cut at sentence
boundaries and sentences are packed greedily; a sentence longer than the budget is cut at token
boundaries (character offsets of the tokenizer, so the text is never re-decoded). Every chunk's prompt
text — :func:`chunk_text`: the document title on its own line, then the passage — is re-tokenized to
check the budget, because joining sentences can merge tokens at the seams.

Chunk ids are ``"<doc id>#<n>"`` (n from 0, in document order), and the output is itself a BEIR
``corpus.jsonl`` (``_id``, ``title``, ``text``, plus ``doc_id`` and ``tokens``), so every index kind of
:mod:`retrieval.index` builds over it unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.data.beir import Doc, iter_corpus
from sparsekit.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
TokenCounter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document: ``title`` is the document's, ``text`` the passage."""

    id: str
    doc_id: str
    title: str
    text: str
    tokens: int


def chunk_text(title: str, text: str) -> str:
    """A chunk's prompt text: the title on its own line (when there is one), then the passage."""
    return f"{title}\n{text}" if title else text


def hf_token_counter(tokenizer: Tokenizer) -> TokenCounter:
    """Count tokens with a Hugging Face tokenizer, special tokens excluded."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_long(sentence: str, budget: int, tokenizer: Tokenizer) -> list[str]:
    """Cut one over-long sentence into pieces of at most ``budget`` tokens at token boundaries."""
    offsets = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces = []
    for start in range(0, len(offsets), budget):
        window = offsets[start:start + budget]
        piece = sentence[window[0][0]:window[-1][1]].strip()
        if piece:
            pieces.append(piece)
    return pieces


def _sentences(text: str, budget: int, count: TokenCounter, tokenizer: Tokenizer) -> Iterator[str]:
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence:
            continue
        if count(sentence) <= budget:
            yield sentence
        else:
            yield from _split_long(sentence, max(1, budget - 2), tokenizer)


def chunk_document(doc: Doc, tokenizer: Tokenizer, max_tokens: int = 128) -> list[Chunk]:
    """Chunks of one document, each at most ``max_tokens`` tokens of :func:`chunk_text`."""
    count = hf_token_counter(tokenizer)
    title = doc.title.strip()
    if title and count(chunk_text(title, "x")) > max_tokens // 2:
        title = ""  # a title that eats half the budget is left out of the chunks (it stays in the index)
    budget = max_tokens - (count(chunk_text(title, "x")) - 1 if title else 0)
    chunks: list[Chunk] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            passage = " ".join(current)
            chunks.append(Chunk(f"{doc.id}#{len(chunks)}", doc.id, title, passage,
                                count(chunk_text(title, passage))))
            current.clear()

    for sentence in _sentences(doc.text, budget, count, tokenizer):
        if current and count(chunk_text(title, " ".join([*current, sentence]))) > max_tokens:
            flush()
        current.append(sentence)
        if count(chunk_text(title, sentence)) > max_tokens:  # alone and still over (tokens merged): cut finer
            current.pop()
            for piece in _split_long(sentence, max(1, budget - 8), tokenizer):
                current.append(piece)
                flush()
    flush()
    return chunks


def iter_chunks(corpus: str | Path, tokenizer: Tokenizer, max_tokens: int = 128) -> Iterator[Chunk]:
    """Stream the chunks of every document of a BEIR ``corpus.jsonl`` (empty documents yield none)."""
    if max_tokens < 8:
        raise InputError("max_tokens", f"must be >= 8, got {max_tokens}")
    for batch in iter_corpus(corpus):
        for doc in batch:
            yield from chunk_document(doc, tokenizer, max_tokens)
