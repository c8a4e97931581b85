"""What every search call accepts, checked one way for all index kinds and engines: a non-blank query
text, a list (not a bare string) of them, a positive integer ``k`` and a sparse query vector. Each
failure is an :class:`~sparsekit.errors.InputError` naming the argument (``text``, ``texts[2]``, ``k``,
``query.indices[3]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsekit.errors import InputError


def check_text(text: Any, field: str = "text") -> str:
    """``text`` if it is a non-blank string."""
    if not isinstance(text, str):
        raise InputError(field, f"query must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(field, "query is empty")
    return text


def query_batch(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list for ``batch_search``, refusing a bare string (it would search each character)."""
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InputError("texts", f"expected a list of query strings, got a {type(texts).__name__}")
    return list(texts)


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of non-blank query strings (:func:`query_batch`, then :func:`check_text` on each)."""
    return [check_text(t, f"texts[{i}]") for i, t in enumerate(query_batch(texts))]


def check_k(k: Any, field: str = "k") -> int:
    """``k`` as a positive int."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(field, f"must be a positive integer, got {k!r}")
    return int(k)


def check_sparse_query(indices: Any, values: Any, vocab_size: int,
                       field: str = "query") -> tuple[np.ndarray, np.ndarray]:
    """A sparse query as (int64 term ids in ``[0, vocab_size)``, float64 finite non-negative weights), one
    weight per id; the native engine checks the same in compiled code (``retrieval.index.inverted``)."""
    terms, weights = np.asarray(indices), np.asarray(values)
    if terms.ndim != 1 or (terms.size and terms.dtype.kind not in "iu"):
        raise InputError(f"{field}.indices", f"expected a 1-D list of integer term ids, got {terms.dtype}"
                                             f"{list(terms.shape)}")
    if weights.ndim != 1 or len(weights) != len(terms) or (weights.size and weights.dtype.kind not in "iuf"):
        raise InputError(f"{field}.values", f"expected {len(terms)} numbers (one per index), got "
                                            f"{weights.dtype}{list(weights.shape)}")
    bad = np.flatnonzero((terms < 0) | (terms >= vocab_size))
    if bad.size:
        j = int(bad[0])
        raise InputError(f"{field}.indices[{j}]", f"term id {int(terms[j])} out of range [0, {vocab_size})")
    weights = weights.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        j = int(bad[0])
        raise InputError(f"{field}.values[{j}]", f"weight {float(weights[j])!r} is not finite and >= 0")
    return terms.astype(np.int64), weights
