"""CTR rows from a user's own table: a CSV, TSV or Parquet file with a 0/1 label column and categorical
(optionally numeric) feature columns, turned into the :class:`~recsys.data.ctr.CTRDataset` every CTR
model, compression table and benchmark here takes.

The rows are split 70/10/20 with a fixed seed (:func:`~recsys.data.libfm.split_rows`). The vocabulary of
each field is built from the **train split only**, the standard Criteo/Avazu preprocessing (e.g.
FuxiCTR, BARS): values seen fewer than ``min_count`` times in train, values seen only in val/test, and
missing values share the field's out-of-vocabulary id (:attr:`CTRField.oov`). Numeric columns are cut
into up to ``bins`` buckets at train quantiles, plus a missing bucket. Given an existing ``schema`` (a
trained model's), rows are encoded with it instead, so calibration or scoring data lines up with the
ids the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.ctr import (
    SPLIT,
    CTRDataset,
    CTRField,
    CTRSchema,
    category_keys,
    encode_column,
    split_dataset,
)
from recsys.data.libfm import split_rows
from recsys.data.table_file import first_row, missing_columns, naming_the_file, read_table, shown_columns
from sparsekit.bounds import count
from sparsekit.errors import InputError


@dataclass
class TableCTRConfig:
    """How to read a CTR table: the label column, which columns are numeric, and vocabulary limits.

    ``fields`` lists the feature columns in order (default: every column but the label). A file without
    a header (``header=False``) has columns ``column_1``, ``column_2``, ... (1-based).
    """

    label: str = "label"
    fields: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    min_count: int = 1
    bins: int = 16
    header: bool = True

    def __post_init__(self) -> None:
        count(self, 1, "min_count")
        count(self, 2, "bins")


def load_table_ctr(
    path: str | Path,
    config: TableCTRConfig | None = None,
    seed: int = 0,
    schema: CTRSchema | None = None,
    fractions: Sequence[float] = SPLIT,
) -> CTRDataset:
    """A CTR table as train / val / test over a schema built from train (or the given ``schema``)."""
    config = config or TableCTRConfig()
    path = Path(path)
    frame = read_table(path, config.header)
    if frame.height == 0:
        raise InputError(path, "the table has no rows")
    with naming_the_file(path, frame.columns):
        return _ctr_dataset(path, frame, config, seed, schema, fractions)


def _ctr_dataset(path: Path, frame: pl.DataFrame, config: TableCTRConfig, seed: int, schema: CTRSchema | None,
                 fractions: Sequence[float]) -> CTRDataset:
    labels = _labels(frame, config.label, path)
    names = list(schema.names) if schema is not None else _field_names(frame, config, path)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise missing_columns(path, missing, frame.columns)
    if schema is None:
        train = split_rows(frame.height, fractions, seed)[0]
        schema = build_schema(frame[train], names, config)
    features = np.stack([encode_column(spec, frame[spec.name], int(offset))
                         for spec, offset in zip(schema.fields, schema.offsets, strict=True)], axis=1)
    info = {"source": path.name, "label": config.label, "oov": "train-split vocabulary"}
    data = split_dataset(path.stem, schema, features, labels, seed, fractions, info=info)
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if len(np.unique(split.labels)) < 2:
            raise InputError(path, f"the {name} split ({len(split)} rows) holds one label only; AUC needs "
                                   "clicks and non-clicks (more rows, or a different --seed)")
    return data


def build_schema(train: pl.DataFrame, names: Sequence[str], config: TableCTRConfig) -> CTRSchema:
    """One OOV-capable field per column: a train vocabulary (by frequency), or train-quantile bins."""
    return CTRSchema(tuple(
        _numeric_field(train[name], config.bins) if name in config.numeric
        else _categorical_field(train[name], config.min_count)
        for name in names
    ))


def _categorical_field(column: pl.Series, min_count: int) -> CTRField:
    keys = category_keys(column).rename("key")
    counts = keys.drop_nulls().value_counts(name="n")
    kept = counts.filter(pl.col("n") >= min_count).sort(["n", "key"], descending=[True, False])
    values = tuple(kept["key"].to_list())
    return CTRField(column.name, len(values) + 1, values=values, oov=True)


def _numeric_field(column: pl.Series, bins: int) -> CTRField:
    if column.dtype == pl.String:
        column = column.str.strip_chars()
    numbers = column.cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if numbers.size == 0:
        raise InputError(column.name, "numeric column has no finite numbers in the train split")
    quantiles = np.quantile(numbers, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = tuple(float(e) for e in np.unique(quantiles))
    return CTRField(column.name, len(edges) + 2, bins=edges, oov=True)


def _labels(frame: pl.DataFrame, label: str, path: Path) -> np.ndarray:
    if label not in frame.columns:
        raise InputError(path, f"label column {label!r} not in the table "
                               f"(columns: {shown_columns(frame.columns)})")
    values = frame[label].cast(pl.String).str.strip_chars().str.to_lowercase()
    clicks = values.replace_strict({"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "1.0": 1.0, "0.0": 0.0},
                                   default=None, return_dtype=pl.Float32)
    bad = clicks.is_null()
    if bad.any():
        row = first_row(bad)
        raise InputError(label, f"row {row + 1}: label {frame[label][row]!r} is not 0/1")
    return clicks.to_numpy().astype(np.float32)


def _field_names(frame: pl.DataFrame, config: TableCTRConfig, path: Path) -> list[str]:
    names = list(config.fields) or [c for c in frame.columns if c != config.label]
    if config.label in names:
        raise InputError(path, f"the label column {config.label!r} cannot also be a feature")
    unknown = sorted(set(config.numeric) - set(names))
    if unknown:
        raise InputError(path, f"numeric column(s) {unknown} are not feature columns ({names})")
    if not names:
        raise InputError(path, "the table has no feature columns besides the label")
    return names
