"""Reading a user's own table file (CSV, TSV or Parquet) into polars, for the loaders that turn click
logs (:mod:`recsys.data.ctr_table`) and interaction logs (:mod:`recsys.data.interactions_table`) into
training data. Text columns stay strings, so ids such as ``"007"`` keep their leading zeros.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from sparsekit.errors import InputError

SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None}
WHOLE_LINE_SEPARATOR = "\x1f"  # ASCII unit separator, absent from tables: each line reads as one cell


def is_table_file(path: str | Path) -> bool:
    """Whether ``path`` names a table by its suffix (it need not exist)."""
    return Path(path).suffix.lower() in SUFFIXES


def read_table(path: str | Path, header: bool = True) -> pl.DataFrame:
    """Read a CSV / TSV / Parquet file; :class:`InputError` names the file when it cannot be read.

    Column names are stripped of surrounding spaces; without a ``header`` they are ``column_1``,
    ``column_2``, ... (1-based, whatever the polars version). TSV has no quoting (a ``"`` is data).
    Duplicate names and nested (list / struct) columns are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(path, f"unknown table format {suffix!r}; use one of {sorted(SUFFIXES)}")
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            sep = SUFFIXES[suffix]
            _check_lines(path, sep, quoted=sep == ",")
            frame = pl.read_csv(path, separator=sep, has_header=header, infer_schema=False,
                                quote_char='"' if sep == "," else None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(path, f"cannot read the table: {exc}") from exc
    return _checked_names(frame, path, header or suffix == ".parquet")


def _raw_lines(path: Path, encoding: str) -> pl.Series:
    """Every line of ``path`` as a string (a blank line is null), read by polars in one pass."""
    return pl.read_csv(path, has_header=False, separator=WHOLE_LINE_SEPARATOR, quote_char=None,
                       infer_schema=False, new_columns=["line"], encoding=encoding)["line"]


def _check_lines(path: Path, sep: str, quoted: bool) -> None:
    """Name the line of a text table that is not UTF-8, or that has another number of fields than the
    first non-blank line (polars would fill a short row with nulls and train on it). Blank lines are left
    to the loaders; a CSV whose quoted cells span lines is not checked line by line."""
    try:
        lines = _raw_lines(path, "utf8")
    except pl.exceptions.ComputeError:
        line = _first_undecodable_line(path)
        if line is not None:
            raise InputError(path, "not valid UTF-8", line) from None
        return  # a cell holds the one-cell separator itself: left to the table read
    if quoted and (lines.str.count_matches('"', literal=True) % 2 == 1).any():
        return
    text = lines.str.replace_all(r'"[^"]*"', "") if quoted else lines
    blank = lines.is_null() | lines.str.contains(r"^\s*$")
    fields = (text.str.count_matches(sep, literal=True) + 1).set(blank, None)
    counted = fields.drop_nulls()
    if counted.is_empty():
        return
    bad = (fields != counted[0]).fill_null(False)
    if bad.any():
        row = first_row(bad)
        raise InputError(path, f"{fields[row]} fields where the first line has {counted[0]} (give every row "
                               "every field, empty where a value is missing)", row + 1)


def _first_undecodable_line(path: Path) -> int | None:
    """1-based line of the first byte sequence that is not UTF-8 (``None`` if the file decodes)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1
    return None


def _checked_names(frame: pl.DataFrame, path: Path, header: bool) -> pl.DataFrame:
    names = [c.strip() for c in frame.columns] if header else [f"column_{i + 1}" for i in range(frame.width)]
    duplicated = sorted({n for n in names if names.count(n) > 1 or "_duplicated_" in n})
    if duplicated:
        raise InputError(path, f"duplicate column name(s) {duplicated}")
    nested = [n for n, dtype in zip(names, frame.dtypes, strict=True) if dtype.is_nested()]
    if nested:
        raise InputError(path, f"column(s) {nested} hold lists or structs; give one scalar per cell")
    return frame.rename(dict(zip(frame.columns, names, strict=True)))


def shown_columns(columns: Sequence[str]) -> str:
    """A table's column names for an error message: the first 20, each cut to 40 characters."""
    shown = [c if len(c) <= 40 else f"{c[:37]}..." for c in list(columns)[:20]]
    return f"{shown} and {len(columns) - 20} more" if len(columns) > 20 else str(shown)


def missing_columns(path: Path, wanted: Sequence[str], columns: Sequence[str]) -> InputError:
    """The error for ``wanted`` columns absent from a table, with a hint when the file reads as one
    column of space-separated values (a LightGCN ``train.txt`` is passed as its folder, not as a table)."""
    hint = ""
    if len(columns) == 1 and " " in columns[0].strip():
        hint = ("; the file reads as one column of space-separated values: a LightGCN-format interaction "
                "list (lines 'user item item ...') is passed as the folder holding train.txt and test.txt")
    return InputError(path, f"column(s) {list(wanted)} not in the table "
                            f"(columns: {shown_columns(columns)}){hint}")


def first_row(mask: pl.Series) -> int:
    """0-based index of the first true value of ``mask`` (nulls count as false): the row an error names."""
    return int(mask.fill_null(False).arg_true()[0])


@contextmanager
def naming_the_file(path: Path, columns: Sequence[str]) -> Iterator[None]:
    """Re-raise an :class:`InputError` that names one of ``columns`` as one that names ``path`` first, so
    a bad cell reads ``clicks.csv: column 'price': row 7: 'abc' is not a number``."""
    try:
        yield
    except InputError as exc:
        if exc.source not in columns:
            raise
        raise InputError(path, f"column {exc.source!r}: {exc.reason}", exc.line) from exc
