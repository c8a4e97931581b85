"""Corpus embeddings for the vector index kinds: every document of a BEIR corpus through the dense
encoder (``title + " " + text``, as the dense teacher of :mod:`retrieval.training.teachers` reads it),
cached on disk (format ``dense-embeddings``) under a key made of the corpus contents and the encoder,
so a rebuild skips the encoder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.data.beir import iter_corpus
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.errors import ArtifactError, InputError

EMBEDDINGS_FORMAT = "dense-embeddings"
EMBEDDINGS_VERSION = 1


def _contents_key(doc_ids: list[str], contents: list[str], max_length: int) -> str:
    from retrieval.encoders.backbone import minilm_dir

    digest = hashlib.sha256()
    weights = minilm_dir() / "model.safetensors"
    digest.update(json.dumps(["all-MiniLM-L6-v2", weights.stat().st_size, max_length]).encode())
    for doc_id, text in zip(doc_ids, contents, strict=True):
        digest.update(doc_id.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:20]


def read_corpus_contents(corpus: Path) -> tuple[list[str], list[str]]:
    """Document ids and the text every encoder reads (``title + " " + text``), streaming the file."""
    from retrieval.training.teachers import doc_contents

    ids: list[str] = []
    contents: list[str] = []
    for batch in iter_corpus(corpus, batch_size=4096):
        ids.extend(d.id for d in batch)
        contents.extend(doc_contents(d) for d in batch)
    if not ids:
        raise InputError(corpus, "corpus has no documents")
    return ids, contents


def embed_corpus(corpus: str | Path, cache_dir: str | Path | None = None, max_length: int = 256,
                 batch_size: int = 64, progress: bool = True) -> tuple[list[str], np.ndarray]:
    """MiniLM embeddings (float32 ``[N, 384]``, unit rows) of a BEIR corpus, cached under ``cache_dir``.

    The cache entry (a ``dense-embeddings`` artifact) is keyed by a hash of every id and text, the
    encoder (name and weight-file size) and ``max_length``; a corrupt entry is recomputed.
    """
    from retrieval.encoders.dense import DenseEncoder

    corpus = Path(corpus)
    if not corpus.is_file():
        raise InputError(corpus, "corpus file not found")
    doc_ids, contents = read_corpus_contents(corpus)
    key = _contents_key(doc_ids, contents, max_length)
    path = Path(cache_dir) / f"embeddings-{key}" if cache_dir else None
    if path is not None and path.exists():
        try:
            open_artifact(path, EMBEDDINGS_FORMAT, EMBEDDINGS_VERSION)
            return doc_ids, np.load(path / "vectors.npy")
        except (ArtifactError, ValueError, OSError):
            pass  # rebuilt below
    vectors = DenseEncoder.from_minilm(max_length=max_length).encode(contents, batch_size, progress)
    if path is not None:
        with write_artifact(path, EMBEDDINGS_FORMAT, EMBEDDINGS_VERSION, params={"max_length": max_length},
                            source={"corpus": str(corpus)}, overwrite=True) as out:
            np.save(out.path("vectors.npy"), vectors)
            out.counts.update(num_docs=len(doc_ids), dim=int(vectors.shape[1]))
    return doc_ids, vectors


def check_vectors(doc_ids: Sequence[str], vectors: np.ndarray) -> None:
    """Vectors must be a finite 2-D float array with one row per (unique, non-empty) document id."""
    if vectors.ndim != 2 or vectors.shape[0] != len(doc_ids) or vectors.shape[0] == 0:
        raise InputError("vectors", f"expected shape [{len(doc_ids)}, dim], got {list(vectors.shape)}")
    seen: dict[str, int] = {}
    for row, doc_id in enumerate(doc_ids):
        if not isinstance(doc_id, str) or not doc_id:
            raise InputError(f"doc_ids[{row}]", f"document ids must be non-empty strings, got {doc_id!r}")
        first = seen.setdefault(doc_id, row)
        if first != row:
            raise InputError(f"doc_ids[{row}]", f"duplicate document id {doc_id!r} (first at row {first})")
    for start in range(0, len(vectors), 65536):
        if not np.isfinite(vectors[start:start + 65536]).all():
            raise InputError("vectors", f"non-finite values in rows {start}..{start + 65535}")
