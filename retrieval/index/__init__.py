"""Index kinds and the registry that opens any of them from its manifest.

Each kind is one module (``bm25.py`` = Lucene BM25 through pyserini; learned sparse, dense,
bi-granular and hybrid plug in beside it, faiss-factory style). Every kind satisfies
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


# manifest format -> opener; new index kinds register here.
OPENERS: dict[str, Callable[[Path], SearchIndex]] = {"bm25-lucene": _open_bm25}
KINDS: dict[str, str] = {"bm25": "bm25-lucene"}


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
    """Build an index of ``kind`` (``bm25`` today) from a BEIR ``corpus.jsonl`` into ``out``."""
    if kind == "bm25":
        from retrieval.index.bm25 import build_bm25_index

        return build_bm25_index(corpus, out, **params)
    raise ValueError(f"unknown index kind {kind!r}; known: {sorted(KINDS)}")
