"""The RAG corpus: a corpus cut into generator-sized chunks plus a search index over them.

``build_rag_corpus`` chunks a BEIR corpus with :mod:`retrieval.rag.chunking` (the generator's tokenizer,
<= 128 tokens by default) and indexes the chunks with any :mod:`retrieval.index` kind — BM25 by
default, or the learned inference-free sparse index (``kind="sparse"``, ``model=...``). It is one
artifact directory (format ``rag-corpus``, version 1), written atomically::

    manifest.json   params (max_tokens, index kind, tokenizer), source fingerprint, counts
    corpus.jsonl    the chunks, as a BEIR corpus (``_id`` = ``<doc id>#<n>``)
    index/          the search index over the chunks (its own manifest)

:class:`RagCorpus` opens it and answers ``retrieve(question, k)`` with the chunks in retrieval order,
which is exactly what a RAG prompt holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from retrieval.data.beir import load_corpus
from retrieval.index import SearchIndex, build_index, check_kind, open_index
from retrieval.rag.chunking import Chunk, chunk_text, iter_chunks
from sparsekit.artifacts import fingerprint, open_artifact, write_artifact
from sparsekit.errors import InputError

MAX_K = 100  # chunks one prompt may hold (the gRPC service has its own, lower limit)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

FORMAT = "rag-corpus"
VERSION = 1
CHUNKS_FILE = "corpus.jsonl"
INDEX_DIR = "index"


@dataclass(frozen=True, slots=True)
class RetrievedChunk:
    """One retrieved chunk: its id, score, 1-based rank and the text the prompt shows."""

    id: str
    score: float
    rank: int
    text: str


def _write_chunks(corpus: Path, out: Path, tokenizer: Tokenizer, max_tokens: int,
                  progress: bool) -> dict[str, int]:
    counts = {"chunks": 0, "docs": 0, "max_chunk_tokens": 0}
    last_doc = None
    with out.open("w", encoding="utf-8") as f:
        for chunk in tqdm(iter_chunks(corpus, tokenizer, max_tokens), desc="chunking", unit=" chunks",
                          disable=not progress):
            f.write(json.dumps(_record(chunk), ensure_ascii=False) + "\n")
            counts["chunks"] += 1
            counts["docs"] += chunk.doc_id != last_doc
            counts["max_chunk_tokens"] = max(counts["max_chunk_tokens"], chunk.tokens)
            last_doc = chunk.doc_id
    if counts["chunks"] == 0:
        raise InputError(corpus, "corpus has no text to chunk")
    return counts


def _record(chunk: Chunk) -> dict[str, Any]:
    return {"_id": chunk.id, "title": chunk.title, "text": chunk.text, "doc_id": chunk.doc_id,
            "tokens": chunk.tokens}


def build_rag_corpus(corpus: str | Path, out: str | Path, tokenizer: Tokenizer, max_tokens: int = 128,
                     kind: str = "bm25", overwrite: bool = False, progress: bool = True,
                     **index_params: Any) -> Path:
    """Chunk ``corpus`` (BEIR ``corpus.jsonl``), index the chunks with ``kind``, write it all at ``out``."""
    corpus, out = Path(corpus), Path(out)
    if not corpus.is_file():
        raise InputError(corpus, "corpus file not found")
    check_kind(kind, index_params.get("model"))  # now, not after chunking the corpus
    params = {"max_tokens": max_tokens, "kind": kind, "tokenizer": type(tokenizer).__name__,
              "vocab_size": len(tokenizer)}
    with write_artifact(out, format=FORMAT, version=VERSION, params=params, source=fingerprint([corpus]),
                        overwrite=overwrite) as writer:
        writer.counts.update(_write_chunks(corpus, writer.path(CHUNKS_FILE), tokenizer, max_tokens, progress))
        build_index(kind, writer.path(CHUNKS_FILE), writer.path(INDEX_DIR), progress=progress, **index_params)
    return out


class RagCorpus:
    """An opened ``rag-corpus``: chunk texts by id and the index that retrieves them."""

    def __init__(self, path: Path, chunks: dict[str, str], index: SearchIndex,
                 params: dict[str, Any]) -> None:
        self.path = path
        self.chunks = chunks
        self.index = index
        self.params = params

    @classmethod
    def open(cls, path: str | Path) -> RagCorpus:
        path = Path(path)
        manifest = open_artifact(path, format=FORMAT, version=VERSION)
        chunks = {doc.id: chunk_text(doc.title, doc.text) for doc in load_corpus(path / CHUNKS_FILE).values()}
        index = open_index(path / INDEX_DIR, verify=False)  # its files are in our manifest: checked above
        return cls(path, chunks, index, manifest.params)

    def __len__(self) -> int:
        return len(self.chunks)

    def retrieve(self, question: str, k: int = 5) -> list[RetrievedChunk]:
        """The top-``k`` chunks for ``question``, best first (an empty list when nothing matches)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("question", "must be a non-empty string")
        if not 1 <= k <= MAX_K:
            raise InputError("k", f"must be in 1..{MAX_K}, got {k}")
        hits = self.index.search(question, k)
        return [RetrievedChunk(cid, float(score), rank, self.chunks[cid])
                for rank, (cid, score) in enumerate(hits, 1)]
