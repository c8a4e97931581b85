"""The hybrid index kind: a sparse first stage, dense re-scoring from disk, and score fusion.

Sparse retrieval (BM25 through Lucene, :mod:`retrieval.index.bm25`, or the inference-free learned
sparse index, :mod:`retrieval.index.learned_sparse`) returns each query's top-``depth`` documents
(``max(depth, k)`` for a top-``k`` search); their MiniLM vectors are read from an on-disk ``np.memmap``
(the bi-granular store, :class:`~retrieval.index.bigranular.VectorStore`) and scored exactly against the
dense query embedding; the two rankings are fused by

* reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): ``sum 1 / (rrf_k + rank)``, ranks
  from 1, ``rrf_k = 60``; or
* a normalised linear combination: ``alpha * minmax(dense) + (1 - alpha) * minmax(sparse)`` with
  min-max normalisation over the query's candidates (a constant score list normalises to 0); ``alpha``
  is tuned on training queries (:func:`tune_linear_weight`), never on the evaluation split.

A document the first stage does not return is not scored (this is re-ranking, not a union).

On disk (format ``hybrid``, version 1)::

    manifest.json   params (fusion, depth, rrf_k, alpha, dtype, first-stage format, query_encoder)
    first_stage/    any index directory :func:`retrieval.index.open_index` opens (bm25, learned sparse)
    vectors.bin     raw [N, dim] float16/float32 document vectors (memory-mapped)
    doc_ids.bin/off document ids of the vector rows
    query_encoder/  only when the index carries a fine-tuned query encoder
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index.bigranular import DTYPES, VECTORS_FILE, VectorStore
from retrieval.index.corpus_embeddings import check_vectors, embed_corpus
from retrieval.index.doc_ids import DocIdTable
from retrieval.index.query_encoding import MINILM, LazyQueries, QueryEncoder, query_encoder_params
from retrieval.query_checks import check_k, check_text, query_batch
from sparsekit.artifacts import Manifest, fingerprint, open_artifact, write_artifact
from sparsekit.bounds import count, one_of, within
from sparsekit.errors import ArtifactError, InputError

FORMAT = "hybrid"
VERSION = 1
FIRST_STAGE_DIR = "first_stage"
FUSIONS = ("rrf", "linear")

Hits = list[tuple[str, float]]


@dataclass
class HybridConfig:
    """Fusion of the first stage with the dense re-score."""

    fusion: str = "rrf"       # "rrf" or "linear"
    depth: int = 1000         # first-stage candidates re-scored per query
    rrf_k: int = 60
    alpha: float = 0.5        # linear fusion: weight of the dense score
    dtype: str = "float16"    # on-disk vector type

    def __post_init__(self) -> None:
        one_of(self, "fusion", FUSIONS)
        one_of(self, "dtype", DTYPES)
        within(self, 0.0, 1.0, "alpha")
        count(self, 0, "rrf_k")
        check_k(self.depth, "depth")


# ---------------------------------------------------------------- fusion math


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by descending score (ties keep input order)."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty(len(scores), dtype=np.int64)
    out[order] = np.arange(1, len(scores) + 1)
    return out


def rrf_scores(sparse: np.ndarray, dense: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion of two score lists over the same candidates."""
    return 1.0 / (k + ranks(sparse)) + 1.0 / (k + ranks(dense))


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over the list; a constant list maps to zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, span = scores.min(), np.ptp(scores)
    return (scores - low) / span if span > 0 else np.zeros_like(scores)


def linear_scores(sparse: np.ndarray, dense: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * minmax(dense) + (1 - alpha) * minmax(sparse)``."""
    return alpha * minmax(dense) + (1.0 - alpha) * minmax(sparse)


def fuse(sparse: np.ndarray, dense: np.ndarray, config: HybridConfig) -> np.ndarray:
    """Fused scores of the candidates under ``config.fusion``."""
    if config.fusion == "rrf":
        return rrf_scores(sparse, dense, config.rrf_k)
    return linear_scores(sparse, dense, config.alpha)


def fused_top(ids: list[str], sparse: np.ndarray, dense: np.ndarray, k: int, config: HybridConfig) -> Hits:
    """The ``k`` best ``(doc id, fused score)`` of a candidate list (ties keep first-stage order)."""
    fused = fuse(sparse, dense, config)
    order = np.argsort(-fused, kind="stable")[:check_k(k)]
    return [(ids[i], float(fused[i])) for i in order]


# ---------------------------------------------------------------- build


def _check_first_stage_source(first_stage: Path, source: dict[str, Any]) -> None:
    """An existing first stage must be built from this corpus: when its manifest records the corpus's
    checksum (bm25 and learned-sparse indexes do), it must be this file's. Checked before embedding."""
    recorded = open_artifact(first_stage, verify=False).source_checksums()
    ours = {m["sha256"] for m in source.values()}
    if recorded and not recorded & ours:
        raise InputError("first_stage", f"{first_stage} was built from another corpus (its recorded "
                                        "checksum differs): build the first stage from the same corpus")


def _check_first_stage_size(first_stage: Path, num_docs: int) -> None:
    """An existing first stage must index as many documents as the vectors hold (the opener checks it)."""
    indexed = open_artifact(first_stage, verify=False).counts.get("num_docs")
    if indexed != num_docs:
        raise InputError("first_stage", f"{first_stage} indexes {indexed} documents, the corpus vectors "
                                        f"number {num_docs}: build the first stage from the same corpus")


def _check_vector_ids(corpus: Path, doc_ids: list[str]) -> None:
    """Given vectors must have a row for every corpus document: the first stage returns corpus ids, and
    one without a row would fail every search that retrieves it (the counts are checked beforehand)."""
    from retrieval.data.beir import iter_corpus

    given = set(doc_ids)
    for batch in iter_corpus(corpus, batch_size=4096):
        for doc in batch:
            if doc.id not in given:
                raise InputError("vectors", f"no vector for document {doc.id!r} of {corpus.name}: give "
                                            "the vectors of this corpus")


def build_hybrid_index(corpus: str | Path, out: str | Path, first_stage: str | Path = "bm25",
                       config: HybridConfig | None = None, first_stage_params: dict[str, Any] | None = None,
                       vectors: tuple[Sequence[str], np.ndarray] | None = None,
                       query_encoder: str | Path | None = None, cache_dir: str | Path | None = None,
                       max_length: int = 256, batch_size: int = 64, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Build a ``hybrid`` index of a BEIR ``corpus.jsonl`` at ``out``.

    ``first_stage`` is an index kind to build (``"bm25"``, ``"sparse"``; ``first_stage_params`` go to
    :func:`retrieval.index.build_index`) or an existing index directory of the same corpus to copy in.
    ``vectors`` = (doc ids, float array) skips the dense encoder.
    """
    from retrieval.index import KINDS, build_index, index_format

    config = config or HybridConfig()
    corpus = Path(corpus)
    if str(first_stage) not in KINDS:  # an index directory: checked now, not after the corpus is embedded
        if not Path(first_stage).is_dir():
            raise InputError("first_stage", f"{first_stage!r} is neither an index kind {sorted(KINDS)} "
                                            "nor an index directory")
        index_format(first_stage)
    if not corpus.is_file():
        raise InputError(corpus, "corpus file not found")
    source = fingerprint([corpus])
    if str(first_stage) not in KINDS:
        _check_first_stage_source(Path(first_stage), source)
    params: dict[str, Any] = asdict(config)
    with write_artifact(out, FORMAT, VERSION, params=params, source=source, overwrite=overwrite) as writer:
        target = writer.path(FIRST_STAGE_DIR)
        if str(first_stage) in KINDS:  # before the dense encoder, so a bad first-stage option fails at once
            build_index(str(first_stage), corpus, target, progress=progress, **(first_stage_params or {}))
        else:
            shutil.copytree(first_stage, target)
        doc_ids, matrix = vectors or embed_corpus(corpus, cache_dir, max_length, batch_size, progress)
        doc_ids = list(doc_ids)
        check_vectors(doc_ids, matrix)
        _check_first_stage_size(target, len(doc_ids))
        if vectors is not None:  # given vectors must cover the corpus (embedded ones are its own ids)
            _check_vector_ids(corpus, doc_ids)
        writer.manifest.params.update(first_stage=index_format(target), query_encoder=query_encoder_params(
            query_encoder, writer.dir, max_length))
        VectorStore.write(matrix, writer.path(VECTORS_FILE), config.dtype, progress=progress)
        DocIdTable.write(doc_ids, writer.dir)
        writer.counts.update(num_docs=len(doc_ids), dim=int(matrix.shape[1]))
    return Path(out)


# ---------------------------------------------------------------- search


class HybridIndex:
    """An opened ``hybrid`` index: first-stage search, dense re-score from the memmap, fusion."""

    kind = "hybrid"

    def __init__(self, path: Path, manifest: Manifest, first_stage: Any, store: VectorStore, ids: DocIdTable,
                 queries: LazyQueries, config: HybridConfig) -> None:
        self.path = path
        self.manifest = manifest
        self.first_stage = first_stage
        self.store = store
        self.ids = ids
        self.queries = queries
        self.config = config

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, encoder: QueryEncoder | None = None,
             **overrides: Any) -> HybridIndex:
        """Validate and open both halves; ``overrides`` (fusion, depth, alpha, rrf_k) replace the manifest."""
        from retrieval.index import open_index

        path = Path(path)
        manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
        params, counts = manifest.params, manifest.counts
        fields = {k: params[k] for k in ("fusion", "depth", "rrf_k", "alpha", "dtype") if k in params}
        config = replace(HybridConfig(**fields), **overrides)
        num_docs, dim = int(counts.get("num_docs", -1)), int(counts.get("dim", -1))
        store = VectorStore.open(path / VECTORS_FILE, num_docs, dim, config.dtype)
        ids = DocIdTable.open(path, num_docs)
        first = open_index(path / FIRST_STAGE_DIR, verify=False)  # its files are in our manifest: checked
        if first.num_docs != num_docs:
            raise ArtifactError(path / FIRST_STAGE_DIR, f"holds {first.num_docs} documents, the vectors "
                                                        f"{num_docs}")
        return cls(path, manifest, first, store, ids, LazyQueries(params.get("query_encoder", MINILM), path,
                                                                  encoder), config)

    @property
    def num_docs(self) -> int:
        return len(self.ids)

    def depth(self, k: int) -> int:
        """First-stage candidates fetched for a top-``k`` search: ``depth``, or ``k`` when larger."""
        return max(self.config.depth, k)

    def row_of(self, doc_id: str) -> int:
        """Vector row of a document id returned by the first stage."""
        row = self.ids.row_of(doc_id)
        if row is None:
            raise ArtifactError(self.path / FIRST_STAGE_DIR, f"returned an unknown doc id {doc_id!r}")
        return row

    def candidate_scores(self, first: Hits, query: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Ids, first-stage scores and exact dense scores (read from the memmap) of one query's hits."""
        rows = np.fromiter((self.row_of(d) for d, _ in first), dtype=np.int64, count=len(first))
        sparse = np.fromiter((s for _, s in first), dtype=np.float64, count=len(first))
        dense = self.store.rescore(np.asarray(query, np.float32), rows).astype(np.float64)
        return [d for d, _ in first], sparse, dense

    def rerank(self, first: Hits, query: np.ndarray, k: int, config: HybridConfig | None = None) -> Hits:
        """Fuse one query's first-stage hits with their dense scores; the top ``k`` fused hits."""
        k = check_k(k)
        if not first:
            return []
        return fused_top(*self.candidate_scores(first, query), k, config or self.config)

    def search(self, text: str, k: int = 10) -> Hits:
        """Top-``k`` ``(doc id, fused score)`` for one query, best first."""
        k = check_k(k)
        query = self.queries([check_text(text)])[0]
        return self.rerank(self.first_stage.search(text, self.depth(k)), query, k)

    def batch_search(self, texts: list[str], k: int = 10, threads: int = 1) -> list[Hits]:
        """Top-``k`` fused hits for each query, in input order (the first stage uses ``threads``)."""
        k = check_k(k)
        texts = query_batch(texts)
        if not texts:
            return []
        queries = self.queries(texts)
        first = self.first_stage.batch_search(texts, self.depth(k), threads)
        return [self.rerank(hits, q, k) for hits, q in zip(first, queries, strict=True)]

    def close(self) -> None:
        close = getattr(self.first_stage, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> HybridIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HybridIndex({str(self.path)!r}, num_docs={self.num_docs}, first_stage="
                f"{self.manifest.params.get('first_stage')!r}, fusion={self.config.fusion!r})")


def tune_linear_weight(index: HybridIndex, first: list[Hits], queries: np.ndarray, qids: list[str],
                       qrels: dict[str, dict[str, int]], grid: Sequence[float] | None = None,
                       k: int = 100) -> tuple[float, dict[float, float]]:
    """The ``alpha`` with the best mean NDCG@10 over (training) queries, and NDCG@10 for each grid value.

    ``first`` holds the queries' first-stage hits and ``queries`` their dense embeddings, so the grid
    costs no extra search. Ties go to the smaller ``alpha``.
    """
    from retrieval.evaluation import evaluate, run_from_hits

    grid = list(grid if grid is not None else np.round(np.linspace(0.0, 1.0, 21), 2))
    scored = [index.candidate_scores(h, q) for h, q in zip(first, queries, strict=True)]
    table: dict[float, float] = {}
    for alpha in grid:
        config = replace(index.config, fusion="linear", alpha=float(alpha))
        hits = [fused_top(*s, k, config) if s[0] else [] for s in scored]
        table[float(alpha)] = evaluate(qrels, run_from_hits(qids, hits)).means["ndcg@10"]
    best = max(table, key=lambda a: (table[a], -a))
    return best, table
