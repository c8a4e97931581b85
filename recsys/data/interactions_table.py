"""Implicit feedback from a user's own interaction log: a CSV, TSV or Parquet file with a user column,
an item column and optionally a timestamp, turned into the :class:`~recsys.data.implicit.ImplicitDataset`
the CF models train on.

Raw ids (any strings) are mapped to contiguous integers; the vocabularies travel with the dataset and
with the trained model, so the Recommend service can be asked about user ``"alice"`` and answer with raw
item ids. Repeated (user, item) pairs count once. Each user's interactions are split into train and test
as the NGCF / LightGCN data are (per-user holdout, ``test_fraction`` of each user's items, at least one
left in train): the **latest** ones when a ``time`` column is given (a temporal split, nothing from the
future in train), otherwise a seeded random choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.implicit import ImplicitDataset
from recsys.data.table_file import read_table
from sparsekit.errors import InputError


@dataclass
class InteractionsConfig:
    """Which columns hold the user, the item and (optionally) the time, and the test share per user."""

    user: str = "user"
    item: str = "item"
    time: str | None = None
    test_fraction: float = 0.2
    header: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError("test_fraction", f"must lie in (0, 1), got {self.test_fraction}")


def load_interactions_table(
    path: str | Path, config: InteractionsConfig | None = None, seed: int = 0
) -> ImplicitDataset:
    """An interaction log as train / test CSR matrices over contiguous ids, with the raw-id vocabularies."""
    config = config or InteractionsConfig()
    path = Path(path)
    frame = read_table(path, config.header)
    columns = [config.user, config.item] + ([config.time] if config.time else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"column(s) {missing} not in the table (columns: {frame.columns})")
    if frame.height == 0:
        raise InputError(path, "the table has no rows")
    users, user_ids = _ids(frame[config.user])
    items, item_ids = _ids(frame[config.item])
    order = _times(frame[config.time]) if config.time else np.random.default_rng(seed).random(frame.height)
    train, test = _split(users, items, order, config.test_fraction)
    shape = (len(user_ids), len(item_ids))
    return ImplicitDataset(_csr(users[train], items[train], shape), _csr(users[test], items[test], shape),
                           *shape, user_ids=user_ids, item_ids=item_ids)


def _ids(column: pl.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    text = column.cast(pl.String).str.strip_chars()
    empty = text.is_null() | (text == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise InputError(column.name, f"row {row + 1}: missing id")
    vocab, codes = np.unique(text.to_numpy().astype(str), return_inverse=True)
    return codes.astype(np.int64), tuple(vocab.tolist())


def _times(column: pl.Series) -> np.ndarray:
    """Timestamps as float64: numbers as given, or ISO-8601 date-times / dates (parsed by polars)."""
    if column.dtype.is_temporal():
        return column.dt.epoch("ms").cast(pl.Float64).to_numpy()
    if column.dtype.is_numeric():
        numbers = column.cast(pl.Float64)
    else:
        text = column.cast(pl.String).str.strip_chars()
        numbers = text.cast(pl.Float64, strict=False)
        if (numbers.is_null() & text.is_not_null()).any():
            try:
                numbers = text.str.to_datetime(strict=True).dt.epoch("ms").cast(pl.Float64)
            except pl.exceptions.PolarsError:
                bad = text.filter(numbers.is_null())[0]
                raise InputError(column.name, f"{bad!r} is neither a number nor a date-time") from None
    if numbers.is_null().any():
        row = int(np.flatnonzero(numbers.is_null().to_numpy())[0])
        raise InputError(column.name, f"row {row + 1}: missing time")
    return numbers.to_numpy()


def _split(
    users: np.ndarray, items: np.ndarray, order: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: one row per distinct (user, item) pair (its first by ``order``), and
    per user the last ``fraction`` of those by ``order`` (ties: file order) in test, one kept in train."""
    position = np.arange(len(users))
    rows = np.lexsort((position, order, items, users))
    first = np.ones(len(rows), bool)
    first[1:] = (users[rows][1:] != users[rows][:-1]) | (items[rows][1:] != items[rows][:-1])
    keep = rows[first]
    keep = keep[np.lexsort((keep, order[keep], users[keep]))]
    counts = np.bincount(users[keep])
    rank = np.arange(len(keep)) - (np.cumsum(counts) - counts)[users[keep]]
    n = counts[users[keep]]
    test = rank >= n - np.clip(np.rint(n * fraction), 0, n - 1)
    return keep[~test], keep[test]


def _csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
