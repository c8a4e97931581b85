"""One-hot CTR rows in the libFM text format, as published for Frappe by NFM (He & Chua, SIGIR 2017).

Each line is ``label feat:1 feat:1 ...``: a label in {-1, 1} or {0, 1} followed by exactly one active
feature per categorical field, given as a global feature id (already offset per field) with value 1.
Rows become a float32 label vector in {0, 1} and an int64 ``[rows, fields]`` matrix of feature ids,
the input of an embedding-bag CTR model. Malformed rows raise :class:`~sparsekit.errors.InputError`
naming the file and the 1-based line. :func:`split_rows` re-splits rows reproducibly (the Frappe train
file is missing from the shared data, so validation + test are re-split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.text_file import first_row, read_text
from sparsekit.errors import InputError


@dataclass
class LibfmData:
    """Labels (float32, 0/1), feature ids (int64 ``[rows, fields]``) and the feature-id space size."""

    labels: np.ndarray
    features: np.ndarray
    num_features: int

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_fields(self) -> int:
        return int(self.features.shape[1])


def _rows(path: Path) -> pl.DataFrame:
    """Columns ``line_no`` (1-based), ``label`` (string), ``feats`` (token list); blank lines dropped."""
    text = read_text(path)
    tokens = pl.DataFrame({"line": text.split("\n")}).with_row_index("line_no", offset=1)
    tokens = tokens.select("line_no", pl.col("line").str.extract_all(r"\S+").alias("tok"))
    tokens = tokens.filter(pl.col("tok").list.len() > 0)
    label, feats = pl.col("tok").list.first(), pl.col("tok").list.slice(1)
    return tokens.select("line_no", label.alias("label"), feats.alias("feats"))


def _labels(rows: pl.DataFrame, path: Path) -> np.ndarray:
    """Map labels {-1, 1} or {0, 1} to float32 {0, 1}; other values, or -1 mixed with 0, are errors."""
    rows = rows.with_columns(value=pl.col("label").cast(pl.Float64, strict=False))
    if row := first_row(rows, ~pl.col("value").is_in([-1.0, 0.0, 1.0]).fill_null(False)):
        raise InputError(path, f"label {row['label']!r} is not one of -1, 0, 1", row["line_no"])
    if (rows["value"] == -1.0).any() and (rows["value"] == 0.0).any():
        first = rows.filter(pl.col("value") <= 0.0).row(0, named=True)
        later = first_row(rows, pl.col("value") == (-1.0 if first["value"] == 0.0 else 0.0))
        raise InputError(path, f"labels mix -1 and 0 (first on line {first['line_no']})", later["line_no"])
    return (rows["value"] > 0).to_numpy().astype(np.float32)


def _check_field_count(rows: pl.DataFrame, path: Path) -> int:
    counts = rows.with_columns(n=pl.col("feats").list.len())
    first = counts.row(0, named=True)
    if first["n"] == 0:
        raise InputError(path, "row has no features", first["line_no"])
    if row := first_row(counts, pl.col("n") != first["n"]):
        message = f"expected {first['n']} features (as on line {first['line_no']}), got {row['n']}"
        raise InputError(path, message, row["line_no"])
    return first["n"]


def _feature_ids(rows: pl.DataFrame, path: Path, num_features: int | None) -> np.ndarray:
    """All ``id:1`` tokens, checked, as one flat int64 array in row order."""
    feats = rows.select("line_no", "feats").explode("feats")
    parts = pl.col("feats").str.split(":")
    feats = feats.with_columns(
        n_parts=parts.list.len(),
        id=parts.list.first().cast(pl.Int64, strict=False),
        value=parts.list.get(1, null_on_oob=True).cast(pl.Float64, strict=False),
    )
    malformed = (pl.col("n_parts") != 2) | pl.col("id").is_null() | pl.col("value").is_null()
    if row := first_row(feats, malformed):
        raise InputError(path, f"token {row['feats']!r} is not 'id:value'", row["line_no"])
    if row := first_row(feats, pl.col("id") < 0):
        raise InputError(path, f"negative feature id in {row['feats']!r}", row["line_no"])
    if row := first_row(feats, pl.col("value") != 1.0):
        raise InputError(path, f"feature value in {row['feats']!r} must be 1 (one-hot rows)", row["line_no"])
    if num_features is not None and (row := first_row(feats, pl.col("id") >= num_features)):
        message = f"feature id in {row['feats']!r} is out of range (num_features={num_features})"
        raise InputError(path, message, row["line_no"])
    return feats["id"].to_numpy().astype(np.int64)


def load_libfm(path: str | Path, num_features: int | None = None) -> LibfmData:
    """Read a one-hot libFM file. ``num_features`` bounds the ids (default: largest id + 1)."""
    path = Path(path)
    rows = _rows(path)
    if rows.height == 0:
        raise InputError(path, "no rows")
    labels = _labels(rows, path)
    fields = _check_field_count(rows, path)
    ids = _feature_ids(rows, path, num_features)
    size = num_features if num_features is not None else int(ids.max()) + 1
    return LibfmData(labels=labels, features=ids.reshape(rows.height, fields), num_features=size)


def split_rows(n: int, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Shuffle ``range(n)`` with ``seed`` and cut it by ``fractions`` (which sum to 1).

    Returns one sorted int64 index array per fraction; the parts are disjoint and cover ``range(n)``.
    The cut points are the cumulative fractions times ``n``, rounded. Same arguments, same split.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    shares = np.asarray(fractions, dtype=np.float64)
    if shares.ndim != 1 or shares.size == 0 or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.rint(np.cumsum(shares[:-1]) * n).astype(np.int64)
    return tuple(np.sort(part) for part in np.split(order, cuts))
