"""Index kinds and the registry that opens any of them from its manifest.

Each kind is one module: ``bm25.py`` (Lucene BM25 through pyserini), ``learned_sparse.py``
(inference-free query table + the native inverted index of ``inverted.py``); dense, bi-granular and
hybrid plug in beside them. Every kind satisfies
:class:`SearchIndex`, is built by a ``build_*`` function that writes an artifact directory
atomically, and is opened by :func:`open_index`, which dispatches on the manifest's ``format``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sparsekit.artifacts import MANIFEST
from sparsekit.errors import ArtifactError


@runtime_checkable
class SearchIndex(Protocol):
    """What the CLI, the evaluator and the gRPC service need from an index."""

    kind: str

    @property
    def num_docs(self) -> int: ...

    def search(self, text: str, k: int) -> list[tuple[str, float]]: ...

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]: ...


def _open_bm25(path: Path) -> SearchIndex:
    from retrieval.index.bm25 import Bm25Index

    return Bm25Index.open(path)


def _open_learned_sparse(path: Path) -> SearchIndex:
    from retrieval.index.learned_sparse import LearnedSparseIndex

    return LearnedSparseIndex.open(path)


def _open_lucene_impact(path: Path) -> SearchIndex:
    from retrieval.index.impact_export import LuceneImpactIndex

    return LuceneImpactIndex.open(path)


def _open_inverted(path: Path) -> SearchIndex:
    from retrieval.index.inverted import InvertedIndex

    return InvertedIndex.open(path)  # raw engine: search_sparse only (no query table attached)


# manifest format -> opener; new index kinds register here.
OPENERS: dict[str, Callable[[Path], SearchIndex]] = {
    "bm25-lucene": _open_bm25,
    "learned-sparse": _open_learned_sparse,
    "learned-sparse-lucene": _open_lucene_impact,
    "sparse-inverted": _open_inverted,
}
KINDS: dict[str, str] = {"bm25": "bm25-lucene", "sparse": "learned-sparse"}


def index_format(path: str | Path) -> str:
    """The ``format`` field of an index directory's manifest (cheap: no checksum pass)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(path, f"not an index directory (no {MANIFEST})")
    try:
        return str(json.loads(mpath.read_text())["format"])
    except (json.JSONDecodeError, KeyError) as exc:
        raise ArtifactError(mpath, f"corrupt manifest: {exc}") from exc


def open_index(path: str | Path) -> SearchIndex:
    """Open any index directory, validating its manifest."""
    fmt = index_format(path)
    if fmt not in OPENERS:
        raise ArtifactError(path, f"unknown index format {fmt!r}; known: {sorted(OPENERS)}")
    return OPENERS[fmt](Path(path))


def build_index(kind: str, corpus: str | Path, out: str | Path, **params: Any) -> Path:
    """Build an index of ``kind`` from a BEIR ``corpus.jsonl`` into ``out``.

    ``bm25`` takes ``k1``, ``b``, ``threads``; ``sparse`` takes ``model`` (a trained
    ``sparse-doc-encoder`` directory), ``quantization``, ``top_k``, ``threshold``, ``batch_size``.
    """
    if kind == "bm25":
        from retrieval.index.bm25 import build_bm25_index

        return build_bm25_index(corpus, out, **params)
    if kind == "sparse":
        from retrieval.index.learned_sparse import build_learned_sparse_index

        if not params.get("model"):
            raise ValueError("kind 'sparse' needs a trained model (--model DIR)")
        model = params.pop("model")
        return build_learned_sparse_index(model, corpus, out, **params)
    raise ValueError(f"unknown index kind {kind!r}; known: {sorted(KINDS)}")
