"""Integer impact weights for Lucene impact indexes (Lin et al., SIGIR 2021), as pyserini stores them.

Lucene stores a learned sparse weight as a term frequency, a 32-bit Java int: :func:`quantize_impacts`
scales and rounds float weights (scale 100 by default, as pyserini does) for documents and queries
alike, and :func:`check_impacts` refuses anything else before it reaches the JVM.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from sparsekit.errors import InputError

MAX_IMPACT = 2**31 - 1  # Lucene term frequencies are Java ints


def _check_token(token: object, field: str) -> None:
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise InputError(field, f"token {token!r} must be a non-empty string without whitespace")


def quantize_impacts(weights: Mapping[str, float], scale: float = 100) -> dict[str, int]:
    """Integer impacts ``round(w * scale)``; weights that round to 0 are dropped.

    Weights must be finite and non-negative and tokens non-empty without whitespace (Anserini's
    pretokenized analyzer splits on whitespace).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise InputError("scale", f"must be a positive finite number, got {scale!r}")
    out: dict[str, int] = {}
    for token, weight in weights.items():
        _check_token(token, "weights")
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise InputError("weights", f"weight of {token!r} must be finite and >= 0, got {weight!r}")
        q = math.floor(w * scale + 0.5)
        if q > MAX_IMPACT:
            raise InputError("weights", f"weight {weight!r} of {token!r} times scale {scale:g} is beyond "
                                        f"Lucene's 32-bit term frequencies (at most {MAX_IMPACT})")
        if q > 0:
            out[token] = q
    return out


def check_impacts(vector: Mapping[str, int], field: str) -> dict[str, int]:
    """``vector`` without its zero impacts, as Python ints; :class:`InputError` naming ``field`` for a
    bad token or a weight that is not a non-negative integer below 2^31."""
    out = {}
    for token, weight in vector.items():
        _check_token(token, field)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Integral) or weight < 0:
            raise InputError(field, f"impact of {token!r} must be a non-negative int (see quantize_impacts), "
                                    f"got {weight!r}")
        if weight > MAX_IMPACT:
            raise InputError(field, f"impact {weight} of {token!r} is beyond Lucene's 32-bit term "
                                    f"frequencies (at most {MAX_IMPACT})")
        if weight:
            out[token] = int(weight)  # a numpy integer as a Python int, for the JVM
    return out
