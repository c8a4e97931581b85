"""Index kinds and the registry that opens any of them from its manifest.

Each kind is one module: ``bm25.py`` (Lucene BM25 through pyserini), ``learned_sparse.py``
(inference-free query table + the native inverted index of ``inverted.py``), ``dense.py`` (MiniLM
vectors in faiss: flat, HNSW, IVF-PQ), ``bigranular.py`` (PQ codes in RAM, vectors on disk, BiDR) and
``hybrid.py`` (sparse first stage + dense re-score + fusion). Every kind satisfies
:class:`SearchIndex`, is built by a ``build_*`` function that writes an artifact directory
atomically, and is opened by :func:`open_index`, which dispatches on the manifest's ``format``. Each
kind is one :class:`IndexKind` row of :data:`REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sparsekit.artifacts import artifact_format, check_target, open_artifact
from sparsekit.errors import ArtifactError


@runtime_checkable
class SearchIndex(Protocol):
    """What the CLI, the evaluator and the gRPC service need from an index."""

    kind: str

    @property
    def num_docs(self) -> int: ...

    def search(self, text: str, k: int) -> list[tuple[str, float]]: ...

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]: ...


@dataclass(frozen=True)
class IndexKind:
    """One index kind: its manifest ``format``, the class that opens it and, for a kind built from a
    corpus, its CLI name, builder and config dataclass (all imported on first use)."""

    format: str
    module: str
    opener: str                   # class with ``open(path)``
    name: str | None = None       # ``build_index`` / ``--kind`` name; None: opened only
    builder: str | None = None    # ``builder(corpus, out, config=..., **params)``
    config: str | None = None     # config dataclass taking the params it names

    def attr(self, name: str) -> Any:
        """``name`` (one of ``opener``, ``builder``, ``config``) from ``retrieval.index.<module>``,
        importing the module on first use so that opening one kind loads no other kind's libraries."""
        return getattr(import_module(f"retrieval.index.{self.module}"), name)


# every index kind; a new one registers here
REGISTRY = (
    IndexKind("bm25-lucene", "bm25", "Bm25Index", "bm25", "build_bm25_index"),
    IndexKind("learned-sparse", "learned_sparse", "LearnedSparseIndex", "sparse",
              "build_learned_sparse_index"),
    IndexKind("learned-sparse-lucene", "impact_export", "LuceneImpactIndex"),
    IndexKind("sparse-inverted", "inverted", "InvertedIndex"),  # raw engine: search_sparse only
    IndexKind("dense-faiss", "dense", "DenseIndex", "dense", "build_dense_index", "DenseConfig"),
    IndexKind("bigranular", "bigranular", "BiGranularIndex", "bigranular", "build_bigranular_index",
              "BiGranularConfig"),
    IndexKind("hybrid", "hybrid", "HybridIndex", "hybrid", "build_hybrid_index", "HybridConfig"),
)
FORMATS: dict[str, IndexKind] = {k.format: k for k in REGISTRY}
KINDS: dict[str, IndexKind] = {k.name: k for k in REGISTRY if k.name}


def index_format(path: str | Path) -> str:
    """The ``format`` field of an index directory's manifest (cheap: no checksum pass)."""
    return artifact_format(path)


def open_index(path: str | Path, verify: bool = True) -> SearchIndex:
    """Open any index directory, validating its manifest (and every file's SHA-256 when ``verify``)."""
    fmt = index_format(path)
    if fmt not in FORMATS:
        raise ArtifactError(path, f"unknown index format {fmt!r}; known: {sorted(FORMATS)}")
    kind = FORMATS[fmt]
    return kind.attr(kind.opener).open(Path(path), verify=verify)


def build_index(kind: str, corpus: str | Path, out: str | Path, **params: Any) -> Path:
    """Build an index of ``kind`` from a BEIR ``corpus.jsonl`` (or the BEIR folder holding it) into ``out``.

    ``bm25`` takes ``k1``, ``b``, ``threads``; ``sparse`` takes ``model`` (a trained
    ``sparse-doc-encoder`` directory), ``quantization``, ``top_k``, ``threshold``, ``batch_size``.
    ``dense`` takes the :class:`~retrieval.index.dense.DenseConfig` fields (``factory``, ``nprobe``,
    ``ef_search``, ...), ``bigranular`` the :class:`~retrieval.index.bigranular.BiGranularConfig`
    fields (``codes``, ``candidates``, ``dtype``, ``nprobe``, ...), ``hybrid`` the
    :class:`~retrieval.index.hybrid.HybridConfig` fields (``fusion``, ``depth``, ``alpha``, ``rrf_k``,
    ``dtype``) plus ``first_stage`` (a kind or an index directory) and ``first_stage_params``; all three
    also take ``query_encoder``, ``cache_dir``, ``max_length``, ``batch_size``, ``overwrite``,
    ``progress``.
    """
    corpus = Path(corpus)
    corpus = corpus / "corpus.jsonl" if corpus.is_dir() else corpus  # a BEIR folder names its corpus
    check_target(Path(out), bool(params.get("overwrite", False)))  # now, not after encoding the corpus
    check_kind(kind, params.get("model"))
    entry = KINDS[kind]
    build = entry.attr(entry.builder)
    if kind == "sparse":  # the trained model comes first
        return build(params.pop("model"), corpus, out, **params)
    if entry.config is None:
        return build(corpus, out, **params)
    config, rest = _split_config(entry.attr(entry.config), params)
    return build(corpus, out, config=config, **rest)


def check_kind(kind: str, model: str | Path | None = None) -> None:
    """Raise unless ``kind`` is a buildable index kind with what it needs: ``sparse`` a trained
    ``sparse-doc-encoder`` at ``model`` (:class:`ArtifactError` naming it). Cheap: for callers with
    long work before :func:`build_index` (chunking, embedding a corpus)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; known: {sorted(KINDS)}")
    if kind == "sparse":
        if not model:
            raise ValueError("kind 'sparse' needs a trained model (--model DIR)")
        open_artifact(model, "sparse-doc-encoder", 1, verify=False)


def _split_config(cls: type, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split keyword arguments into a ``cls`` config dataclass and the rest."""
    names = {f.name for f in fields(cls)}
    config = cls(**{k: v for k, v in params.items() if k in names and v is not None})
    return config, {k: v for k, v in params.items() if k not in names}
