"""Index kinds and the registry that opens any of them from its manifest.

Each kind is one module: ``bm25.py`` (Lucene BM25 through pyserini), ``learned_sparse.py``
(inference-free query table + the native inverted index of ``inverted.py``), ``dense.py`` (MiniLM
vectors in faiss: flat, HNSW, IVF-PQ), ``bigranular.py`` (PQ codes in RAM, vectors on disk, BiDR) and
``hybrid.py`` (sparse first stage + dense re-score + fusion). Every kind satisfies
:class:`SearchIndex`, is built by a ``build_*`` function that writes an artifact directory
atomically, and is opened by :func:`open_index`, which dispatches on the manifest's ``format``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sparsekit.artifacts import artifact_format, check_target
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


def _open_dense(path: Path) -> SearchIndex:
    from retrieval.index.dense import DenseIndex

    return DenseIndex.open(path)


def _open_bigranular(path: Path) -> SearchIndex:
    from retrieval.index.bigranular import BiGranularIndex

    return BiGranularIndex.open(path)


def _open_hybrid(path: Path) -> SearchIndex:
    from retrieval.index.hybrid import HybridIndex

    return HybridIndex.open(path)


# manifest format -> opener; new index kinds register here.
OPENERS: dict[str, Callable[[Path], SearchIndex]] = {
    "bm25-lucene": _open_bm25,
    "learned-sparse": _open_learned_sparse,
    "learned-sparse-lucene": _open_lucene_impact,
    "sparse-inverted": _open_inverted,
    "dense-faiss": _open_dense,
    "bigranular": _open_bigranular,
    "hybrid": _open_hybrid,
}
KINDS: dict[str, str] = {"bm25": "bm25-lucene", "sparse": "learned-sparse", "dense": "dense-faiss",
                         "bigranular": "bigranular", "hybrid": "hybrid"}


def index_format(path: str | Path) -> str:
    """The ``format`` field of an index directory's manifest (cheap: no checksum pass)."""
    return artifact_format(path)


def open_index(path: str | Path) -> SearchIndex:
    """Open any index directory, validating its manifest."""
    fmt = index_format(path)
    if fmt not in OPENERS:
        raise ArtifactError(path, f"unknown index format {fmt!r}; known: {sorted(OPENERS)}")
    return OPENERS[fmt](Path(path))


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
    if kind == "bm25":
        from retrieval.index.bm25 import build_bm25_index

        return build_bm25_index(corpus, out, **params)
    if kind == "sparse":
        from retrieval.index.learned_sparse import build_learned_sparse_index

        if not params.get("model"):
            raise ValueError("kind 'sparse' needs a trained model (--model DIR)")
        model = params.pop("model")
        return build_learned_sparse_index(model, corpus, out, **params)
    if kind == "dense":
        from retrieval.index.dense import DenseConfig, build_dense_index

        config, rest = _split_config(DenseConfig, params)
        return build_dense_index(corpus, out, config, **rest)
    if kind == "bigranular":
        from retrieval.index.bigranular import BiGranularConfig, build_bigranular_index

        config, rest = _split_config(BiGranularConfig, params)
        return build_bigranular_index(corpus, out, config, **rest)
    if kind == "hybrid":
        from retrieval.index.hybrid import HybridConfig, build_hybrid_index

        config, rest = _split_config(HybridConfig, params)
        return build_hybrid_index(corpus, out, config=config, **rest)
    raise ValueError(f"unknown index kind {kind!r}; known: {sorted(KINDS)}")


def _split_config(cls: type, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split keyword arguments into a ``cls`` config dataclass and the rest."""
    names = {f.name for f in fields(cls)}
    config = cls(**{k: v for k, v in params.items() if k in names and v is not None})
    return config, {k: v for k, v in params.items() if k not in names}
