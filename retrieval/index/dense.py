"""The dense index kind: MiniLM document embeddings in a faiss index (flat, HNSW or IVF-PQ).

Dense retrieval with the all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych, Sentence-BERT 2019;
:class:`~retrieval.encoders.dense.DenseEncoder`) over faiss (Johnson et al., "Billion-scale similarity
search with GPUs", 2019). Documents are embedded exactly as the dense teacher of
:mod:`retrieval.training.teachers` embeds them (``title + " " + text``, max 256 tokens, unit vectors)
and stored in any faiss index described by a factory string: ``"Flat"`` (exact inner product),
``"HNSW32"`` (graph), ``"IVF256,PQ48"`` (inverted lists of product-quantized codes). The inner product
of unit vectors is the cosine similarity. When ``faiss.get_num_gpus() > 0`` the opened index is moved
to the GPU (kinds faiss cannot move, e.g. HNSW, stay on the CPU).

This module also holds what the dense, bi-granular and hybrid kinds share:

* :func:`embed_corpus`: corpus embeddings, cached on disk under a key made of the corpus contents and
  the encoder, so reruns skip the encoder;
* :class:`DocIdTable`: document ids in a memory-mapped UTF-8 blob + offsets (no per-id Python
  object stays in RAM, which matters at a million documents);
* :class:`QueryEncoder` and :func:`load_query_encoder`: the query side named by the manifest
  (the bundled MiniLM, or a fine-tuned query encoder copied into the index).

On disk (format ``dense-faiss``, version 1)::

    manifest.json   params (factory, metric, nprobe, ef_search, query_encoder), counts (num_docs, dim)
    index.faiss     the faiss index (row i = document i)
    doc_ids.bin     document ids, UTF-8, concatenated
    doc_ids.off     int64 [N + 1] byte offsets into doc_ids.bin (raw little-endian)
    query_encoder/  only when the index carries a fine-tuned query encoder
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.data.beir import iter_corpus
from retrieval.encoders.backbone import HIDDEN_SIZE
from retrieval.query_checks import check_k, check_text, check_texts, query_batch
from sparsekit.artifacts import Manifest, fingerprint, open_artifact, write_artifact
from sparsekit.bounds import count
from sparsekit.errors import ArtifactError, InputError

FORMAT = "dense-faiss"
VERSION = 1
EMBEDDINGS_FORMAT = "dense-embeddings"
INDEX_FILE = "index.faiss"
IDS_BLOB, IDS_OFFSETS = "doc_ids.bin", "doc_ids.off"
QUERY_ENCODER_DIR = "query_encoder"
MINILM = {"kind": "minilm", "max_length": 256}


class QueryEncoder(Protocol):
    """Turns query texts into float32 ``[n, dim]`` vectors comparable with the stored documents."""

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray: ...


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


# ---------------------------------------------------------------- document ids on disk


class DocIdTable:
    """Document ids read from a memory-mapped blob: ``table[row]`` decodes one id on demand."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self._blob = blob
        self._offsets = offsets

    @staticmethod
    def write(doc_ids: Sequence[str], folder: Path) -> None:
        """Write ``doc_ids.bin`` and ``doc_ids.off`` into ``folder``."""
        encoded = [d.encode("utf-8") for d in doc_ids]
        offsets = np.zeros(len(encoded) + 1, dtype="<i8")
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        (folder / IDS_BLOB).write_bytes(b"".join(encoded))
        offsets.tofile(folder / IDS_OFFSETS)

    @classmethod
    def open(cls, folder: Path, num_docs: int) -> DocIdTable:
        """Map the two files of ``folder``; raise :class:`ArtifactError` naming a bad file."""
        blob_path, off_path = folder / IDS_BLOB, folder / IDS_OFFSETS
        for path in (blob_path, off_path):
            if not path.is_file():
                raise ArtifactError(path, "document id file missing")
        if off_path.stat().st_size != 8 * (num_docs + 1):
            raise ArtifactError(off_path, f"expected {num_docs + 1} offsets, file holds "
                                          f"{off_path.stat().st_size // 8}")
        offsets = np.memmap(off_path, dtype="<i8", mode="r")
        size = blob_path.stat().st_size
        if offsets[0] != 0 or offsets[-1] != size or (num_docs and np.any(np.diff(offsets) < 0)):
            raise ArtifactError(off_path, f"offsets do not describe {blob_path.name} ({size} bytes)")
        blob = np.memmap(blob_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> str:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._blob[start:end]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


# ---------------------------------------------------------------- query encoders


def load_query_encoder(spec: dict[str, Any], index_dir: Path, device: str | None = None) -> QueryEncoder:
    """The query encoder a manifest names: the bundled MiniLM, or the copy under ``query_encoder/``."""
    if spec.get("kind") == "minilm":
        from retrieval.encoders.dense import DenseEncoder

        return DenseEncoder.from_minilm(max_length=int(spec.get("max_length", 256)), device=device)
    if spec.get("kind") == "dir":
        from retrieval.encoders.dense import load_dense_encoder

        return load_dense_encoder(index_dir / QUERY_ENCODER_DIR, device=device)
    raise ArtifactError(index_dir, f"unknown query encoder {spec!r}")


def query_encoder_params(query_encoder: str | Path | None, writer_dir: Path,
                         max_length: int = 256) -> dict[str, Any]:
    """Copy a fine-tuned query encoder (a ``dense-query-encoder`` dir) into the index; its manifest spec."""
    if query_encoder is None:
        return {**MINILM, "max_length": max_length}
    source = Path(query_encoder)
    if not source.is_dir():
        raise InputError("query_encoder", f"{source}: not a directory")
    shutil.copytree(source, writer_dir / QUERY_ENCODER_DIR)
    return {"kind": "dir", "path": QUERY_ENCODER_DIR}


class LazyQueries:
    """Encodes query texts with the index's encoder, loaded on first use; validates every text."""

    def __init__(self, spec: dict[str, Any], index_dir: Path, encoder: QueryEncoder | None) -> None:
        self.spec = spec
        self.index_dir = index_dir
        self._encoder = encoder

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = load_query_encoder(self.spec, self.index_dir)
        return self._encoder

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        return np.ascontiguousarray(self.encoder.encode(texts, progress=False), dtype=np.float32)


# ---------------------------------------------------------------- corpus embeddings (cached)


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
            open_artifact(path, EMBEDDINGS_FORMAT, VERSION)
            return doc_ids, np.load(path / "vectors.npy")
        except (ArtifactError, ValueError, OSError):
            pass  # rebuilt below
    vectors = DenseEncoder.from_minilm(max_length=max_length).encode(contents, batch_size, progress)
    if path is not None:
        with write_artifact(path, EMBEDDINGS_FORMAT, VERSION, params={"max_length": max_length},
                            source={"corpus": str(corpus)}, overwrite=True) as out:
            np.save(out.path("vectors.npy"), vectors)
            out.counts.update(num_docs=len(doc_ids), dim=int(vectors.shape[1]))
    return doc_ids, vectors


def check_vectors(doc_ids: Sequence[str], vectors: np.ndarray) -> None:
    """Vectors must be a finite 2-D float array with one row per (unique, non-empty) document id."""
    if vectors.ndim != 2 or vectors.shape[0] != len(doc_ids) or vectors.shape[0] == 0:
        raise InputError("vectors", f"expected shape [{len(doc_ids)}, dim], got {list(vectors.shape)}")
    if len(set(doc_ids)) != len(doc_ids) or not all(doc_ids):
        raise InputError("doc_ids", "document ids must be non-empty and unique")
    for start in range(0, len(vectors), 65536):
        if not np.isfinite(vectors[start:start + 65536]).all():
            raise InputError("vectors", f"non-finite values in rows {start}..{start + 65535}")


# ---------------------------------------------------------------- faiss helpers


def _faiss() -> Any:
    import faiss

    return faiss


def new_faiss_index(factory: str, dim: int, opq_iterations: int | None = None) -> Any:
    """An empty inner-product faiss index from a factory string (InputError on a bad string)."""
    try:
        index = _faiss().index_factory(dim, factory, _faiss().METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError("factory", f"faiss cannot build {factory!r}: {str(exc).splitlines()[0]}") from exc
    tune_training(index, opq_iterations)
    return index


def tune_training(index: Any, opq_iterations: int | None = None) -> None:
    """Training settings for how we use faiss, applied through pre-transforms to the inner index.

    * No polysemous training: the factory turns it on for PQ codes, it costs minutes, and only
      Hamming-filtered L2 search uses it (never inner-product search).
    * k-means may run on fewer than 39 points per centroid (small corpora) without printing a warning
      for every sub-quantizer of every OPQ iteration; the clustering itself is unchanged.
    * ``opq_iterations`` replaces OPQ's 50 alternations (rotation / codebooks) when given.
    """
    faiss = _faiss()
    for i in range(index.chain.size() if hasattr(index, "chain") else 0):
        transform = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(transform, faiss.OPQMatrix):
            pq = faiss.ProductQuantizer(transform.d_out, transform.M, 8)
            pq.cp.min_points_per_centroid = 1
            pq.this.disown()  # the OPQ matrix only borrows it: left to the process (one small PQ per build)
            transform.pq = pq
            if opq_iterations is not None:
                transform.niter = opq_iterations
    inner = faiss.downcast_index(index.index) if hasattr(index, "chain") else index
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    for part in (inner, getattr(inner, "pq", None)):
        if part is not None and hasattr(part, "cp"):
            part.cp.min_points_per_centroid = 1


def train_and_add(index: Any, vectors: np.ndarray, train_size: int, seed: int, chunk: int = 65536,
                  progress: bool = True) -> Any:
    """Train ``index`` on a seeded sample of ``vectors`` (if it needs training), then add every row."""
    from tqdm import tqdm

    if not index.is_trained:
        n = len(vectors)
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, train_size), replace=False))
        _check_trainable(index, len(sample))
        try:
            index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        except RuntimeError as exc:  # faiss's own checks, e.g. fewer points than centroids
            raise InputError("corpus", f"cannot train the index: {str(exc).splitlines()[0]}") from exc
    for start in tqdm(range(0, len(vectors), chunk), desc="adding vectors", unit="chunk",
                      disable=not progress):
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))
    return index


def _check_trainable(index: Any, n: int) -> None:
    """faiss's OPQ training aborts the process (not an exception) on fewer vectors than dimensions."""
    faiss = _faiss()
    for i in range(index.chain.size() if hasattr(index, "chain") else 0):
        transform = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(transform, faiss.OPQMatrix) and n < transform.d_in:
            raise InputError("corpus", f"OPQ needs at least {transform.d_in} training vectors, got {n}: add "
                                       "documents or use codes without OPQ (e.g. PQ48)")


def set_search_params(index: Any, nprobe: int, ef_search: int) -> None:
    """Apply ``nprobe`` / ``efSearch`` where the index (or a wrapped one) has them."""
    space = _faiss().ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        with suppress(RuntimeError):  # this index kind has no such parameter
            space.set_index_parameter(index, name, value)


def maybe_to_gpu(index: Any) -> Any:
    """The index on all GPUs when faiss sees any (and supports the kind), else unchanged."""
    faiss = _faiss()
    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index  # e.g. HNSW: no GPU implementation


@contextmanager
def omp_threads(threads: int) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads inside the block."""
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def read_faiss_index(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(path, "faiss index file missing")
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as exc:
        raise ArtifactError(path, f"cannot read the faiss index: {str(exc).splitlines()[0]}") from exc


def hits_from_rows(ids: DocIdTable, scores: np.ndarray, rows: np.ndarray) -> list[tuple[str, float]]:
    """``(doc id, score)`` pairs of one result row, dropping faiss's ``-1`` padding."""
    return [(ids[int(r)], float(s)) for s, r in zip(scores, rows, strict=True) if r >= 0]


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
        _faiss().write_index(index, str(writer.path(INDEX_FILE)))
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
        """Top-``k`` (scores, rows) for a float32 ``[n, dim]`` query matrix; rows ``-1`` pad short lists."""
        queries = check_queries(queries, self.dim)
        return self.index.search(queries, check_k(k))

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


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """A C-contiguous float32 ``[n, dim]`` matrix of finite query vectors."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InputError("queries", f"expected shape [n, {dim}], got {list(queries.shape)}")
    if not np.isfinite(queries).all():
        raise InputError("queries", "non-finite values")
    return queries
