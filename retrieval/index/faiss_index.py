"""faiss plumbing shared by the dense and bi-granular kinds (Johnson et al., "Billion-scale similarity
search with GPUs", 2019): an index from a factory string, training on a sample and adding in chunks,
search parameters, OpenMP threads, and the move to a GPU when faiss sees one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from sparsekit.errors import ArtifactError, InputError


def load_faiss() -> Any:
    import faiss

    return faiss


def new_faiss_index(factory: str, dim: int, opq_iterations: int | None = None) -> Any:
    """An empty inner-product faiss index from a factory string (InputError on a bad string)."""
    try:
        index = load_faiss().index_factory(dim, factory, load_faiss().METRIC_INNER_PRODUCT)
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
    faiss = load_faiss()
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
    faiss = load_faiss()
    for i in range(index.chain.size() if hasattr(index, "chain") else 0):
        transform = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(transform, faiss.OPQMatrix) and n < transform.d_in:
            raise InputError("corpus", f"OPQ needs at least {transform.d_in} training vectors, got {n}: add "
                                       "documents or use codes without OPQ (e.g. PQ48)")


def set_search_params(index: Any, nprobe: int, ef_search: int) -> None:
    """Apply ``nprobe`` / ``efSearch`` where the index (or a wrapped one) has them."""
    space = load_faiss().ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        with suppress(RuntimeError):  # this index kind has no such parameter
            space.set_index_parameter(index, name, value)


def maybe_to_gpu(index: Any) -> Any:
    """The index on all GPUs when faiss sees any (and supports the kind), else unchanged."""
    faiss = load_faiss()
    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index  # e.g. HNSW: no GPU implementation


@contextmanager
def omp_threads(threads: int) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads inside the block."""
    faiss = load_faiss()
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
        return load_faiss().read_index(str(path))
    except RuntimeError as exc:
        raise ArtifactError(path, f"cannot read the faiss index: {str(exc).splitlines()[0]}") from exc
