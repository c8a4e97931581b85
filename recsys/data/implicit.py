"""Implicit-feedback interaction lists in the NGCF / LightGCN format (``train.txt`` / ``test.txt``).

The splits published with NGCF (Wang et al., SIGIR 2019) and LightGCN (He et al., SIGIR 2020) for
Gowalla, Yelp2018 and Amazon-Book store one line per user: ``user item item ...`` with remapped integer
ids, whitespace separated; a user line may list no items. Both files are loaded into users x items CSR
matrices of ones sharing one shape. Malformed lines raise :class:`~sparsekit.errors.InputError` naming
the file and the 1-based line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import scipy.sparse as sp

from recsys.data.text_file import first_row, read_text
from sparsekit.errors import InputError


@dataclass
class ImplicitDataset:
    """Train and test interactions as binary ``num_users x num_items`` CSR matrices; ``user_ids`` and
    ``item_ids`` (when the data had raw ids, :mod:`recsys.data.interactions_table`) name each row / column."""

    train: sp.csr_matrix
    test: sp.csr_matrix
    num_users: int
    num_items: int
    user_ids: tuple[str, ...] | None = None
    item_ids: tuple[str, ...] | None = None


@dataclass
class _Interactions:
    users: np.ndarray  # every user with a line, empty or not
    pair_users: np.ndarray
    pair_items: np.ndarray


def _lines(path: Path) -> pl.DataFrame:
    """Columns ``line_no`` (1-based) and ``line`` of a text file."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return pl.DataFrame({"line": lines}, schema={"line": pl.String}).with_row_index("line_no", offset=1)


def _tokens(path: Path) -> pl.DataFrame:
    """One row per token: ``line_no``, ``pos`` (0 = the user), ``tok`` and the parsed ``id``."""
    return (
        _lines(path)
        .select("line_no", pl.col("line").str.extract_all(r"\S+").alias("tok"))
        .filter(pl.col("tok").list.len() > 0)
        .with_columns(pos=pl.int_ranges(pl.col("tok").list.len()))
        .explode("tok", "pos")
        .with_columns(id=pl.col("tok").cast(pl.Int64, strict=False))
    )


def _check_tokens(tokens: pl.DataFrame, path: Path) -> None:
    if row := first_row(tokens, pl.col("id").is_null()):
        raise InputError(path, f"token {row['tok']!r} is not an integer id", row["line_no"])
    if row := first_row(tokens, pl.col("id") < 0):
        what = "user" if row["pos"] == 0 else "item"
        raise InputError(path, f"negative {what} id {row['id']}", row["line_no"])
    users = tokens.filter(pl.col("pos") == 0)
    if row := first_row(users, ~pl.col("id").is_first_distinct()):
        first = users.filter(pl.col("id") == row["id"])["line_no"][0]
        raise InputError(path, f"duplicate line for user {row['id']} (first on line {first})", row["line_no"])


def _read_interactions(path: str | Path) -> _Interactions:
    """Parse one ``user item item ...`` file into user ids and (user, item) pairs."""
    path = Path(path)
    tokens = _tokens(path)
    _check_tokens(tokens, path)
    tokens = tokens.with_columns(user=pl.col("id").first().over("line_no"))
    pairs = tokens.filter(pl.col("pos") > 0)
    return _Interactions(
        users=tokens.filter(pl.col("pos") == 0)["id"].to_numpy(),
        pair_users=pairs["user"].to_numpy(),
        pair_items=pairs["id"].to_numpy(),
    )


def _max_id(*arrays: np.ndarray) -> int:
    return max((int(a.max()) for a in arrays if a.size), default=-1)


def _check_rows_fit(folder: Path, files: tuple[str, str], users: tuple[np.ndarray, np.ndarray]) -> None:
    """Each CSR matrix holds a row pointer per user id up to the largest: one raw id (say 10**12) where
    remapped ``0..n-1`` ids belong would allocate terabytes. Refused, naming the file, if it cannot fit."""
    num_users = _max_id(*users) + 1
    need, free = 2 * 8 * (num_users + 1), psutil.virtual_memory().available
    if need > free:
        name = files[0] if _max_id(users[0]) + 1 == num_users else files[1]
        raise InputError(folder / name, f"user id {num_users - 1} needs {need / 2**30:.1f} GiB of row "
                                        f"pointers, more than the {free / 2**30:.1f} GiB free; ids index "
                                        "rows: remap them to 0..n-1")


def _binary_csr(data: _Interactions, shape: tuple[int, int]) -> sp.csr_matrix:
    ones = np.ones(data.pair_users.size, dtype=np.float32)
    matrix = sp.csr_matrix((ones, (data.pair_users, data.pair_items)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def load_implicit(folder: str | Path, train: str = "train.txt", test: str = "test.txt") -> ImplicitDataset:
    """Load ``train.txt`` and ``test.txt`` of a LightGCN-style folder; ids are 0-based and dense.

    ``num_users`` / ``num_items`` are one more than the largest id seen in either file. A repeated item
    on one line counts once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"expected a LightGCN-style folder holding {train} and {test} (or a CSV / "
                                 "TSV / Parquet interaction log)")
    tr, te = _read_interactions(folder / train), _read_interactions(folder / test)
    if tr.pair_items.size == 0:
        raise InputError(folder / train, "no interactions (no line lists an item)")
    _check_rows_fit(folder, (train, test), (tr.users, te.users))
    num_users = _max_id(tr.users, te.users) + 1
    num_items = _max_id(tr.pair_items, te.pair_items) + 1
    shape = (num_users, num_items)
    return ImplicitDataset(_binary_csr(tr, shape), _binary_csr(te, shape), num_users, num_items)
