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
    """Read a CSV / TSV / Parquet file; :class:`InputError` names the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(path, f"unknown table format {suffix!r}; use one of {sorted(SUFFIXES)}")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, separator=SUFFIXES[suffix], has_header=header, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(path, f"cannot read the table: {exc}") from exc
