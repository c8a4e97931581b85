"""Reading a user's own table file (CSV, TSV or Parquet) into polars, for the loaders that turn click
logs (:mod:`recsys.data.ctr_table`) and interaction logs (:mod:`recsys.data.interactions_table`) into
training data. Text columns stay strings, so ids such as ``"007"`` keep their leading zeros.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sparsekit.errors import InputError

SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None}


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
            frame = pl.read_csv(path, separator=sep, has_header=header, infer_schema=False,
                                quote_char='"' if sep == "," else None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(path, f"cannot read the table: {exc}") from exc
    return _checked_names(frame, path, header or suffix == ".parquet")


def _checked_names(frame: pl.DataFrame, path: Path, header: bool) -> pl.DataFrame:
    names = [c.strip() for c in frame.columns] if header else [f"column_{i + 1}" for i in range(frame.width)]
    duplicated = sorted({n for n in names if names.count(n) > 1 or "_duplicated_" in n})
    if duplicated:
        raise InputError(path, f"duplicate column name(s) {duplicated}")
    nested = [n for n, dtype in zip(names, frame.dtypes, strict=True) if dtype.is_nested()]
    if nested:
        raise InputError(path, f"column(s) {nested} hold lists or structs; give one scalar per cell")
    return frame.rename(dict(zip(frame.columns, names, strict=True)))
