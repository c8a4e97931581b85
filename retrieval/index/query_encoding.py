"""The query side of the vector index kinds: the :class:`QueryEncoder` protocol, the encoder a manifest
names (the bundled all-MiniLM-L6-v2, or a fine-tuned copy under ``query_encoder/``), loaded on first
use by :class:`LazyQueries`, and the check of raw query vectors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.query_checks import check_texts
from sparsekit.errors import ArtifactError, InputError

QUERY_ENCODER_DIR = "query_encoder"
MINILM = {"kind": "minilm", "max_length": 256}


class QueryEncoder(Protocol):
    """Turns query texts into float32 ``[n, dim]`` vectors comparable with the stored documents."""

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray: ...


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


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """A C-contiguous float32 ``[n, dim]`` matrix of finite query vectors."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InputError("queries", f"expected shape [n, {dim}], got {list(queries.shape)}")
    if not np.isfinite(queries).all():
        raise InputError("queries", "non-finite values")
    return queries
