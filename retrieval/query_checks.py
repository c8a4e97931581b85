"""What every search call accepts, checked one way for all index kinds and engines: a non-blank query
text, a list (not a bare string) of them, and a positive integer ``k``. Each failure is an
:class:`~sparsekit.errors.InputError` naming the argument (``text``, ``texts[2]``, ``k``)."""

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
