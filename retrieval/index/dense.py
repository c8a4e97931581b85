"""The dense index kind: MiniLM document embeddings in a faiss index (flat, HNSW or IVF-PQ).

Dense retrieval with the all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych, Sentence-BERT 2019;
:class:`~retrieval.encoders.dense.DenseEncoder`) over faiss (Johnson et al., "Billion-scale similarity
search with GPUs", 2019). Documents are embedded exactly as the dense teacher of
:mod:`retrieval.training.teachers` embeds them (``title + " " + text``, max 256 tokens, unit vectors)
and stored in any faiss index described by a factory string: ``"Flat"`` (exact inner product),
``"HNSW32"`` (graph), ``"IVF256,PQ48"`` (inverted lists of product-quantized codes). The inner product
of unit vectors is the cosine similarity. When ``faiss.get_num_gpus() > 0`` the opened index is moved
to the GPU (kinds faiss cannot move, e.g. HNSW, stay on the CPU).

What the dense, bi-granular and hybrid kinds share lives beside it: corpus embeddings
(:mod:`.corpus_embeddings`), document ids on disk (:mod:`.doc_ids`), query encoders
(:mod:`.query_encoding`) and faiss plumbing (:mod:`.faiss_index`).

On disk (format ``dense-faiss``, version 1)::

    manifest.json   params (factory, metric, nprobe, ef_search, query_encoder), counts (num_docs, dim)
    index.faiss     the faiss index (row i = document i)
    doc_ids.bin     document ids, UTF-8, concatenated
    doc_ids.off     int64 [N + 1] byte offsets into doc_ids.bin (raw little-endian)
    query_encoder/  only when the index carries a fine-tuned query encoder
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.encoders.backbone import HIDDEN_SIZE
from retrieval.index.corpus_embeddings import check_vectors, embed_corpus
from retrieval.index.doc_ids import DocIdTable, hits_from_rows
from retrieval.index.faiss_index import (
    load_faiss,
    maybe_to_gpu,
    new_faiss_index,
    omp_threads,
    read_faiss_index,
    set_search_params,
    train_and_add,
)
from retrieval.index.query_encoding import (
    MINILM,
    LazyQueries,
    QueryEncoder,
    check_queries,
    query_encoder_params,
)
from retrieval.query_checks import check_k, check_text, query_batch
from sparsekit.artifacts import Manifest, fingerprint, open_artifact, write_artifact
from sparsekit.bounds import count
from sparsekit.errors import ArtifactError, InputError

FORMAT = "dense-faiss"
VERSION = 1
INDEX_FILE = "index.faiss"


@dataclass
class DenseConfig:
    """How a dense index is built and searched."""

    factory: str = "Flat"       # faiss index factory string
    nprobe: int = 16            # IVF lists visited per query (IVF kinds)
    ef_search: int = 128        # HNSW search breadth (HNSW kinds)
    train_size: int = 100_000   # vectors sampled to train the index (IVF, PQ)
    seed: int = 0

    def __post_init__(self) -> None:
        count(self, 1, "nprobe", "ef_search", "train_size")


# ---------------------------------------------------------------- build and search


def build_dense_index(corpus: str | Path | None, out: str | Path, config: DenseConfig | None = None,
                      vectors: tuple[Sequence[str], np.ndarray] | None = None,
                      query_encoder: str | Path | None = None, cache_dir: str | Path | None = None,
                      max_length: int = 256, batch_size: int = 64, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Embed ``corpus`` (or take ``vectors`` = (doc ids, float array)) into a ``dense-faiss`` index.

    ``query_encoder`` is a fine-tuned ``dense-query-encoder`` directory to copy in (default: MiniLM).
    """
    config = config or DenseConfig()
    if vectors is None:
        if corpus is None:
            raise InputError("corpus", "give a corpus file or precomputed vectors")
        new_faiss_index(config.factory, HIDDEN_SIZE)  # a bad factory fails before the corpus is embedded
        vectors = embed_corpus(corpus, cache_dir, max_length, batch_size, progress)
    doc_ids, matrix = list(vectors[0]), vectors[1]
    check_vectors(doc_ids, matrix)
    index = new_faiss_index(config.factory, matrix.shape[1])
    source = fingerprint([Path(corpus)]) if corpus is not None else {}
    params: dict[str, Any] = {"metric": "inner_product", **asdict(config)}
    with write_artifact(out, FORMAT, VERSION, params=params, source=source, overwrite=overwrite) as writer:
        writer.manifest.params["query_encoder"] = query_encoder_params(query_encoder, writer.dir, max_length)
        train_and_add(index, matrix, config.train_size, config.seed, progress=progress)
        load_faiss().write_index(index, str(writer.path(INDEX_FILE)))
        DocIdTable.write(doc_ids, writer.dir)
        writer.counts.update(num_docs=len(doc_ids), dim=int(matrix.shape[1]),
                             index_bytes=writer.path(INDEX_FILE).stat().st_size)
    return Path(out)


class DenseIndex:
    """An opened ``dense-faiss`` index: encode the query, search faiss, map rows to document ids."""

    kind = "dense"

    def __init__(self, path: Path, manifest: Manifest, index: Any, ids: DocIdTable,
                 queries: LazyQueries) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.ids = ids
        self.queries = queries

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, encoder: QueryEncoder | None = None,
             gpu: bool = True) -> DenseIndex:
        """Validate the manifest (and checksums when ``verify``), read the faiss index, map the ids.

        ``encoder`` replaces the manifest's query encoder (tests, or a caller that already holds one).
        """
        path = Path(path)
        manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
        index = read_faiss_index(path / INDEX_FILE)
        num_docs = int(manifest.counts.get("num_docs", -1))
        if index.ntotal != num_docs:
            raise ArtifactError(path / INDEX_FILE, f"holds {index.ntotal} vectors, manifest says {num_docs}")
        params = manifest.params
        set_search_params(index, int(params.get("nprobe", 16)), int(params.get("ef_search", 128)))
        index = maybe_to_gpu(index) if gpu else index
        ids = DocIdTable.open(path, num_docs)
        queries = LazyQueries(params.get("query_encoder", MINILM), path, encoder)
        return cls(path, manifest, index, ids, queries)

    @property
    def num_docs(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest.counts["dim"])

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rows) for a float32 ``[n, dim]`` query matrix; rows ``-1`` pad short lists.
        ``k`` past the corpus size is capped at it (the arrays are ``[n, min(k, num_docs)]``)."""
        queries = check_queries(queries, self.dim)
        return self.index.search(queries, min(check_k(k), max(self.num_docs, 1)))

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, inner product)`` for one query, best first."""
        scores, rows = self.search_vectors(self.queries([check_text(text)]), k)
        return hits_from_rows(self.ids, scores[0], rows[0])

    def batch_search(self, texts: list[str], k: int = 10, threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` hits for each query, in input order (faiss runs ``threads`` OpenMP threads)."""
        texts = query_batch(texts)
        if not texts:
            return []
        with omp_threads(threads):
            scores, rows = self.search_vectors(self.queries(texts), k)
        return [hits_from_rows(self.ids, s, r) for s, r in zip(scores, rows, strict=True)]

    def close(self) -> None:
        self.index = None

    def __enter__(self) -> DenseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        factory = self.manifest.params["factory"]
        return f"DenseIndex({str(self.path)!r}, num_docs={self.num_docs}, factory={factory!r})"


