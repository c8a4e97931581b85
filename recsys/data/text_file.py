"""The plain-text data files of the recommender loaders (LightGCN splits, libFM rows, MovieLens tables):
decoding checked up front, and the first offending row of a parsed frame, so errors name file and line."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sparsekit.errors import InputError


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file decoded, line ends as ``\\n``; a missing file or an undecodable byte is an
    :class:`InputError` naming it."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(path, f"not valid {encoding.upper()} (byte offset {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # Windows and old-Mac line ends


def first_row(frame: pl.DataFrame, mask: pl.Expr) -> dict | None:
    """The first row of ``frame`` where ``mask`` holds, as a dict (its ``line_no`` names the line)."""
    bad = frame.filter(mask)
    return bad.row(0, named=True) if bad.height else None
