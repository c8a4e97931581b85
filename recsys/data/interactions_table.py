"""Implicit feedback from a user's own interaction log: a CSV, TSV or Parquet file with a user column,
an item column and optionally a timestamp, turned into the :class:`~recsys.data.implicit.ImplicitDataset`
the CF models train on.

Raw ids (any strings) are mapped to contiguous integers; the vocabularies travel with the dataset and
with the trained model, so the Recommend service can be asked about user ``"alice"`` and answer with raw
item ids. Repeated (user, item) pairs count once. Each user's interactions are split into train and test
as the NGCF / LightGCN data are (per-user holdout, ``test_fraction`` of each user's items, at least one
left in train): the **latest** ones when a ``time`` column is given (per-user leave-latest-out: nothing
from a user's own future is trained on, but other users' later interactions stay in train, so it is
not a global time cut; times compare exactly, to the nanosecond), otherwise a seeded random choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.data.implicit import ImplicitDataset
from recsys.data.table_file import first_row, missing_columns, naming_the_file, read_table
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
        raise missing_columns(path, missing, frame.columns)
    if frame.height == 0:
        raise InputError(path, "the table has no rows")
    with naming_the_file(path, frame.columns):
        users, user_ids = _ids(frame[config.user])
        items, item_ids = _ids(frame[config.item])
        order = _times(frame[config.time]) if config.time else _random_order(users, items, seed)
    train, test = _split(users, items, order, config.test_fraction)
    shape = (len(user_ids), len(item_ids))
    return ImplicitDataset(_csr(users[train], items[train], shape), _csr(users[test], items[test], shape),
                           *shape, user_ids=user_ids, item_ids=item_ids)


def _ids(column: pl.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    """Contiguous codes in sorted raw-id order, and the sorted raw ids."""
    text = column.cast(pl.String).str.strip_chars()
    empty = text.is_null() | (text == "")
    if empty.any():
        row = first_row(empty)
        raise InputError(column.name, f"row {row + 1}: missing id")
    codes = text.rank("dense").cast(pl.Int64).to_numpy() - 1
    return codes, tuple(text.unique().sort().to_list())


def _times(column: pl.Series) -> np.ndarray:
    """Exact sort keys: integers as given, float numbers, or date-times / dates (ISO-8601 text or typed
    columns) as nanoseconds since the epoch. A missing or NaN time is an error."""
    if isinstance(column.dtype, pl.Datetime):
        keys = column.dt.epoch("ns")
    elif column.dtype == pl.Date:
        keys = column.cast(pl.Datetime("ns")).dt.epoch("ns")
    elif column.dtype.is_integer():
        keys = column
    elif column.dtype.is_float():
        keys = column.fill_nan(None)
    elif column.dtype == pl.String:
        keys = _parse_times(column)
    else:
        raise InputError(column.name, f"a time column holds numbers or date-times, not {column.dtype}")
    if keys.is_null().any():
        row = first_row(keys.is_null())
        raise InputError(column.name, f"row {row + 1}: missing time")
    return keys.to_numpy()


def _parse_times(column: pl.Series) -> pl.Series:
    text = column.str.strip_chars()
    given = text.is_not_null() & (text != "")
    for kind in (pl.Int64, pl.Float64):
        keys = text.cast(kind, strict=False)
        if not (keys.is_null() & given).any():
            return keys.fill_nan(None) if kind == pl.Float64 else keys
    try:
        return text.str.to_datetime(strict=True, time_unit="ns").dt.epoch("ns")
    except pl.exceptions.PolarsError:
        number = text.cast(pl.Float64, strict=False).is_not_null()
        try:
            time = text.str.to_datetime(strict=False, time_unit="ns").is_not_null()
        except pl.exceptions.PolarsError:  # no date-time format inferred from the first value
            time = pl.repeat(False, len(text), eager=True)
        bad = given & ~number & ~time
        if not bad.fill_null(False).any():  # each cell parses alone: numbers mixed with date-times
            row = first_row(number & given)
            raise InputError(column.name, f"row {row + 1}: {text[row]!r} is a number in a column of "
                                          "date-times (one kind per column)") from None
        row = first_row(bad)
        raise InputError(column.name,
                         f"row {row + 1}: {text[row]!r} is neither a number nor a date-time") from None


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


def _random_order(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """One seeded random key per distinct (user, item) pair, shared by its repeats (so an often-repeated
    item is no likelier to stay in train)."""
    _, pair = np.unique(users * (int(items.max()) + 1) + items, return_inverse=True)
    return np.random.default_rng(seed).random(int(pair.max()) + 1)[pair]


def _csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
