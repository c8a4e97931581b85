"""MovieLens 100K (``ml-100k``, GroupLens 1998; Harper & Konstan, ACM TiiS 2015) from its original files.

Reads ``u.data`` (or a split such as ``u1.base``: user, item, rating 1-5, unix timestamp, tab
separated), ``u.user`` (``id|age|gender|occupation|zip``), ``u.genre`` (``name|index``) and ``u.item``
(``|``-separated, latin-1: id, title, release date, video release date, IMDb URL, one 0/1 flag per
genre) into polars DataFrames. Malformed rows, ratings outside 1..5 and ratings of unknown users or
items raise :class:`~sparsekit.errors.InputError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.data.text_file import first_row, read_text
from sparsekit.errors import InputError

RATING_FIELDS = ("user", "item", "rating", "timestamp")
USER_FIELDS = ("id", "age", "gender", "occupation", "zip")
ITEM_FIELDS = ("id", "title", "release_date", "video_release_date", "imdb_url")
RATING_RANGE = (1, 5)


@dataclass
class MovieLens:
    """Ratings (user, item, rating, timestamp), users (id, age, gender, occupation, zip) and items
    (id, title, genres as a list of genre names); ``genres`` lists every genre in ``u.genre`` order."""

    ratings: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    genres: list[str]


def _lines(path: Path, encoding: str) -> pl.DataFrame:
    """Columns ``line_no`` (1-based) and ``line`` of the non-blank lines of a text file."""
    text = read_text(path, encoding)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    frame = pl.DataFrame({"line": lines}).with_row_index("line_no", offset=1)
    return frame.filter(pl.col("line").str.strip_chars() != "")


def _table(path: Path, sep: str, fields: Sequence[str], encoding: str = "utf-8") -> pl.DataFrame:
    """Split every line on ``sep`` into string columns ``fields``; a wrong field count is an error."""
    rows = _lines(path, encoding).with_columns(pl.col("line").str.split(sep).alias("cols"))
    if row := first_row(rows, pl.col("cols").list.len() != len(fields)):
        got = len(row["cols"])
        raise InputError(path, f"expected {len(fields)} {sep!r}-separated fields, got {got}", row["line_no"])
    columns = [pl.col("cols").list.get(i).alias(name) for i, name in enumerate(fields)]
    return rows.select("line_no", *columns)


def _parse_ints(df: pl.DataFrame, path: Path, fields: Sequence[str], dtype: pl.DataType) -> pl.DataFrame:
    """Cast string columns ``fields`` to integers; the first value that is not one is an error."""
    for name in fields:
        parsed = pl.col(name).str.strip_chars().cast(pl.Int64, strict=False).cast(dtype, strict=False)
        if row := first_row(df, parsed.is_null()):
            message = f"field '{name}': {row[name]!r} is not an integer in the {dtype} range"
            raise InputError(path, message, row["line_no"])
        df = df.with_columns(parsed)
    return df


def _check_unique(df: pl.DataFrame, path: Path, name: str = "id") -> None:
    if row := first_row(df, ~pl.col(name).is_first_distinct()):
        first = df.filter(pl.col(name) == row[name])["line_no"][0]
        message = f"field '{name}': duplicate {row[name]} (first on line {first})"
        raise InputError(path, message, row["line_no"])


def _check_known(df: pl.DataFrame, path: Path, name: str, known: pl.Series, what: str) -> None:
    if row := first_row(df, ~pl.col(name).is_in(known.implode())):
        raise InputError(path, f"field '{name}': unknown {what} id {row[name]}", row["line_no"])


def load_genres(path: str | Path) -> list[str]:
    """Genre names from ``u.genre`` (``name|index``), ordered by index; indices must be 0..n-1."""
    path = Path(path)
    table = _parse_ints(_table(path, "|", ("name", "index")), path, ["index"], pl.Int64)
    for position, row in enumerate(table.sort("index").iter_rows(named=True)):
        if row["index"] != position:
            raise InputError(path, f"field 'index': expected {position}, got {row['index']}", row["line_no"])
    return table.sort("index")["name"].to_list()


def load_users(path: str | Path) -> pl.DataFrame:
    """``u.user`` as columns id, age, gender, occupation, zip (zip stays a string: some are not numeric)."""
    path = Path(path)
    users = _parse_ints(_table(path, "|", USER_FIELDS), path, ["id", "age"], pl.Int32)
    _check_unique(users, path)
    return users.select(USER_FIELDS)


def load_items(path: str | Path, genres: Sequence[str]) -> pl.DataFrame:
    """``u.item`` (latin-1) as columns id, title, genres (the names of the genres flagged 1)."""
    path = Path(path)
    flags = [f"genre:{g}" for g in genres]
    items = _parse_ints(_table(path, "|", [*ITEM_FIELDS, *flags], encoding="latin-1"), path, ["id"], pl.Int32)
    _check_unique(items, path)
    for flag in flags:
        if row := first_row(items, ~pl.col(flag).is_in(["0", "1"])):
            raise InputError(path, f"field '{flag}': {row[flag]!r} is not 0 or 1", row["line_no"])
    names = [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
    genre_list = pl.concat_list(names).list.drop_nulls() if names else pl.lit([], dtype=pl.List(pl.String))
    return items.select("id", "title", genre_list.alias("genres"))


def load_ratings(path: str | Path, users: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """A ratings file (``u.data``, ``u1.base``, ...) as columns user, item, rating, timestamp."""
    path = Path(path)
    ratings = _parse_ints(_table(path, "\t", RATING_FIELDS), path, ["user", "item", "rating"], pl.Int32)
    ratings = _parse_ints(ratings, path, ["timestamp"], pl.Int64)
    low, high = RATING_RANGE
    if row := first_row(ratings, ~pl.col("rating").is_between(low, high)):
        raise InputError(path, f"field 'rating': {row['rating']} is outside {low}..{high}", row["line_no"])
    _check_known(ratings, path, "user", users["id"], "user")
    _check_known(ratings, path, "item", items["id"], "item")
    return ratings.select(RATING_FIELDS)


def load_movielens(folder: str | Path, ratings_file: str = "u.data") -> MovieLens:
    """Load an ``ml-100k`` folder; ``ratings_file`` picks ``u.data`` or a split (``u1.base``, ``ua.test``)."""
    folder = Path(folder)
    genres = load_genres(folder / "u.genre")
    users = load_users(folder / "u.user")
    items = load_items(folder / "u.item", genres)
    ratings = load_ratings(folder / ratings_file, users, items)
    return MovieLens(ratings=ratings, users=users, items=items, genres=genres)
