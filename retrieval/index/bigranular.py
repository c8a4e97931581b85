"""The bi-granular index kind: compact PQ codes in RAM for candidates, full vectors on disk to re-score.

Bi-granular document representation (BiDR; Xiao et al., "Progressively Optimized Bi-Granular Document
Representation for Scalable Embedding Based Retrieval", WWW 2022; microsoft/BiDR). A faiss index of
product-quantized codes (Jégou et al., PQ, TPAMI 2011; OPQ rotation, Ge et al., CVPR 2013; default
``"OPQ48,PQ48"``: 48 bytes per 384-d document, optionally behind an IVF coarse quantizer; on small
corpora, where the 384 x 384 rotation and the codebooks outweigh the codes, a reduced-dimension rotation
and 4-bit codes such as ``"OPQ48_96,PQ48x4"``, 24 bytes) stays in RAM and returns each query's
top-``C`` candidates (at least ``k``) by asymmetric distance. The float16 (or float32) document
vectors live on disk in an ``np.memmap``; only the candidate rows are read, a fixed block of rows at a
time, and the candidates are re-scored exactly (inner product). faiss's own ``IndexRefineFlat`` keeps
the refine vectors in RAM (faiss issue #2172); this is the on-disk equivalent.

On disk (format ``bigranular``, version 1)::

    manifest.json   params (codes factory, candidates C, nprobe, dtype, query_encoder), counts
    codes.faiss     the code index (loaded into RAM)
    vectors.bin     raw row-major [N, dim] float16/float32 vectors (memory-mapped, never loaded whole)
    doc_ids.bin/off document ids (memory-mapped, see :class:`~retrieval.index.doc_ids.DocIdTable`)
    query_encoder/  only when the index carries a fine-tuned query encoder
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.encoders.backbone import HIDDEN_SIZE
from retrieval.index.corpus_embeddings import check_vectors, embed_corpus
from retrieval.index.doc_ids import DocIdTable
from retrieval.index.faiss_index import (
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
from sparsekit.bounds import count, one_of
from sparsekit.errors import ArtifactError, InputError

FORMAT = "bigranular"
VERSION = 1
CODES_FILE = "codes.faiss"
VECTORS_FILE = "vectors.bin"
DTYPES = ("float16", "float32")
RESCORE_BLOCK = 64  # candidate rows read and scored at a time (bounds the re-score's working memory)


@dataclass
class BiGranularConfig:
    """How a bi-granular index is built and searched."""

    codes: str = "OPQ48,PQ48"   # faiss factory string of the in-RAM code index
    candidates: int = 1000      # C: candidates taken from the codes and re-scored from disk
    dtype: str = "float16"      # on-disk vector type
    nprobe: int = 32            # IVF lists visited per query (IVF code indexes)
    opq_iterations: int = 50    # OPQ rotation / codebook alternations (faiss's default 50)
    train_size: int = 100_000   # vectors sampled to train the code index
    seed: int = 0

    def __post_init__(self) -> None:
        one_of(self, "dtype", DTYPES)
        count(self, 1, "candidates", "nprobe", "opq_iterations", "train_size")


class VectorStore:
    """Row-major ``[N, dim]`` vectors in a memory-mapped file; reads only the rows asked for."""

    def __init__(self, path: Path, array: np.ndarray) -> None:
        self.path = path
        self.array = array

    @staticmethod
    def write(vectors: np.ndarray, path: Path, dtype: str, chunk: int = 65536, progress: bool = True) -> None:
        """Stream ``vectors`` to ``path`` as raw ``dtype`` rows (InputError if a value overflows it)."""
        if dtype not in DTYPES:
            raise InputError("dtype", f"must be one of {DTYPES}, got {dtype!r}")
        with open(path, "wb") as fh:
            for start in tqdm(range(0, len(vectors), chunk), desc="writing vectors", unit="chunk",
                              disable=not progress):
                with np.errstate(over="ignore"):  # reported below as an InputError
                    block = np.asarray(vectors[start:start + chunk]).astype(dtype)
                if not np.isfinite(block).all():
                    raise InputError("vectors", f"rows {start}..{start + len(block) - 1} overflow {dtype}")
                fh.write(np.ascontiguousarray(block).tobytes())

    @classmethod
    def open(cls, path: Path, num_docs: int, dim: int, dtype: str) -> VectorStore:
        """Map ``path`` read-only, checking its size against ``num_docs x dim x dtype``."""
        if dtype not in DTYPES:
            raise ArtifactError(path, f"unknown vector dtype {dtype!r}")
        if not path.is_file():
            raise ArtifactError(path, "vector file missing")
        expected = num_docs * dim * np.dtype(dtype).itemsize
        if path.stat().st_size != expected:
            raise ArtifactError(path, f"size {path.stat().st_size} bytes, expected {expected} "
                                      f"({num_docs} x {dim} {dtype}): truncated or corrupt")
        array = np.memmap(path, dtype=dtype, mode="r", shape=(num_docs, dim))
        raw = getattr(array, "_mmap", None)
        if raw is not None and hasattr(mmap, "MADV_RANDOM"):
            raw.madvise(mmap.MADV_RANDOM)  # candidate reads are scattered: no read-ahead
        return cls(path, array)

    @property
    def bytes(self) -> int:
        return int(self.array.nbytes)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of ``rows`` (read in ascending file order, returned in the order asked)."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.array.shape[1]), dtype=np.float32)
        out[order] = self.array[rows[order]]
        return out

    def rescore(self, query: np.ndarray, rows: np.ndarray, block: int = RESCORE_BLOCK) -> np.ndarray:
        """Exact inner products of one query with the stored vectors of ``rows``, in the order asked.

        The rows are read ``block`` at a time into one reused buffer, so the working memory is about
        ``block x dim`` values however many rows are asked for. The scores are those of
        ``gather(rows) @ query`` (up to float32 summation order inside the BLAS kernel).
        """
        block = check_k(block, "block")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.array)):
            raise InputError("rows", f"must lie in [0, {len(self.array)}), got {rows.min()}..{rows.max()}")
        starts = list(range(0, len(rows), block))
        size = (min(block, len(rows)), self.array.shape[1])
        raw = np.empty(size, dtype=self.array.dtype)
        buffer = raw if raw.dtype == np.float32 else np.empty(size, dtype=np.float32)
        scores = np.empty(len(rows), dtype=np.result_type(np.float32, query))
        for start, end in pairwise([*starts, len(rows)]):
            n = end - start
            np.take(self.array, rows[start:end], axis=0, out=raw[:n], mode="clip")  # bounds checked above
            if buffer is not raw:
                buffer[:n] = raw[:n]
            scores[start:end] = buffer[:n] @ query
        if not np.isfinite(scores).all():
            raise ArtifactError(self.path, "non-finite stored vectors (corrupt vector file)")
        return scores


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, rows)``, best first (ties by row)."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))
    return scores[order], rows[order]


def build_bigranular_index(corpus: str | Path | None, out: str | Path, config: BiGranularConfig | None = None,
                           vectors: tuple[Sequence[str], np.ndarray] | None = None, code_index: Any = None,
                           query_encoder: str | Path | None = None, cache_dir: str | Path | None = None,
                           max_length: int = 256, batch_size: int = 64, overwrite: bool = False,
                           progress: bool = True) -> Path:
    """Build a ``bigranular`` index from ``corpus`` (embedded with MiniLM) or from ``vectors``.

    ``code_index`` is an already trained, empty faiss index to hold the codes (for instance
    :meth:`~retrieval.quantization.contrastive_pq.ContrastivePQ.to_faiss`; ``config.codes`` then only
    describes it in the manifest); by default ``config.codes`` is trained on a sample of the vectors.
    ``vectors`` may be an ``np.memmap``: it is streamed in chunks, never loaded whole.
    """
    config = config or BiGranularConfig()
    if vectors is None:
        if corpus is None:
            raise InputError("corpus", "give a corpus file or precomputed vectors")
        if code_index is None:  # a bad factory string fails before the corpus is embedded
            new_faiss_index(config.codes, HIDDEN_SIZE, config.opq_iterations)
        vectors = embed_corpus(corpus, cache_dir, max_length, batch_size, progress)
    doc_ids, matrix = list(vectors[0]), vectors[1]
    check_vectors(doc_ids, matrix)
    dim = int(matrix.shape[1])
    index = new_faiss_index(config.codes, dim, config.opq_iterations) if code_index is None else code_index
    if index.d != dim or index.ntotal != 0:
        raise InputError("code_index", f"must be an empty {dim}-d index, got {index.ntotal} x {index.d}")
    params: dict[str, Any] = {**asdict(config), "metric": "inner_product",
                              "pretrained_codes": code_index is not None}
    source = fingerprint([Path(corpus)]) if corpus is not None else {}
    with write_artifact(out, FORMAT, VERSION, params=params, source=source, overwrite=overwrite) as writer:
        writer.manifest.params["query_encoder"] = query_encoder_params(query_encoder, writer.dir, max_length)
        train_and_add(index, matrix, config.train_size, config.seed, progress=progress)
        _write_index(index, writer.path(CODES_FILE))
        VectorStore.write(matrix, writer.path(VECTORS_FILE), config.dtype, progress=progress)
        DocIdTable.write(doc_ids, writer.dir)
        writer.counts.update(num_docs=len(doc_ids), dim=dim, code_bytes=int(index.sa_code_size()),
                             codes_file_bytes=writer.path(CODES_FILE).stat().st_size,
                             vector_bytes=writer.path(VECTORS_FILE).stat().st_size)
    return Path(out)


def _write_index(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


class BiGranularIndex:
    """An opened ``bigranular`` index: codes search for ``C`` candidates, exact re-score from the memmap."""

    kind = "bigranular"

    def __init__(self, path: Path, manifest: Manifest, codes: Any, store: VectorStore, ids: DocIdTable,
                 queries: LazyQueries) -> None:
        self.path = path
        self.manifest = manifest
        self.codes = codes
        self.store = store
        self.ids = ids
        self.queries = queries
        self.candidates = int(manifest.params["candidates"])

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, encoder: QueryEncoder | None = None,
             candidates: int | None = None, nprobe: int | None = None, gpu: bool = True) -> BiGranularIndex:
        """Validate the manifest (and checksums when ``verify``), load the codes, map the vectors.

        ``candidates`` / ``nprobe`` override the manifest's; ``encoder`` replaces its query encoder.
        """
        path = Path(path)
        manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
        params, counts = manifest.params, manifest.counts
        num_docs, dim = int(counts.get("num_docs", -1)), int(counts.get("dim", -1))
        store = VectorStore.open(path / VECTORS_FILE, num_docs, dim, str(params.get("dtype")))
        codes = read_faiss_index(path / CODES_FILE)
        if codes.ntotal != num_docs or codes.d != dim:
            raise ArtifactError(path / CODES_FILE, f"holds {codes.ntotal} x {codes.d}, manifest says "
                                                   f"{num_docs} x {dim}")
        set_search_params(codes, nprobe or int(params.get("nprobe", 32)), 128)
        codes = maybe_to_gpu(codes) if gpu else codes
        ids = DocIdTable.open(path, num_docs)
        index = cls(path, manifest, codes, store, ids, LazyQueries(params.get("query_encoder", MINILM), path,
                                                                   encoder))
        if candidates is not None:
            index.candidates = check_k(candidates, "candidates")
        return index

    @property
    def num_docs(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest.counts["dim"])

    def coarse(self, queries: np.ndarray, candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Code-only search: approximate (scores, rows) of the top ``candidates`` per query."""
        queries = check_queries(queries, self.dim)
        count = check_k(self.candidates if candidates is None else candidates, "candidates")
        return self.codes.search(queries, min(count, self.num_docs))

    def search_vectors(self, queries: np.ndarray, k: int,
                       candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` exact (scores, rows) per query among its code candidates; rows ``-1`` pad short lists.

        The codes return ``max(candidates, k)`` candidates, so a ``k`` above ``C`` still gets ``k`` hits;
        ``k`` past the corpus size is capped at it (the arrays are ``[n, min(k, num_docs)]``).
        """
        queries = check_queries(queries, self.dim)
        k = min(check_k(k), max(self.num_docs, 1))
        wanted = self.candidates if candidates is None else check_k(candidates, "candidates")
        _, cand = self.coarse(queries, max(wanted, k))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, query in enumerate(queries):
            found = cand[i][cand[i] >= 0]
            s, r = top_k(self.store.rescore(query, found), found, k)
            scores[i, :len(s)], rows[i, :len(r)] = s, r
        return scores, rows

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[tuple[str, float]]:
        return [(self.ids[int(r)], float(s)) for s, r in zip(scores, rows, strict=True) if r >= 0]

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, exact inner product)`` for one query, best first."""
        scores, rows = self.search_vectors(self.queries([check_text(text)]), k)
        return self._hits(scores[0], rows[0])

    def batch_search(self, texts: list[str], k: int = 10, threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` hits for each query, in input order (the code search runs ``threads`` threads)."""
        texts = query_batch(texts)
        if not texts:
            return []
        with omp_threads(threads):
            scores, rows = self.search_vectors(self.queries(texts), k)
        return [self._hits(s, r) for s, r in zip(scores, rows, strict=True)]

    def close(self) -> None:
        self.codes = None

    def __enter__(self) -> BiGranularIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BiGranularIndex({str(self.path)!r}, num_docs={self.num_docs}, "
                f"codes={self.manifest.params['codes']!r}, candidates={self.candidates})")
