"""CTR datasets in one layout: seeded 70/10/20 splits of one-hot rows over global feature ids.

Every dataset becomes a :class:`CTRDataset`: train / val / test :class:`CTRSplit` (int64 feature ids
``[N, F]`` with the per-field offsets already applied, float32 0/1 labels) and a :class:`CTRSchema`
(field names, cardinalities, raw value vocabularies). :meth:`CTRSchema.encode` turns raw field values
(what a ScoreCTR client sends) into feature ids, naming the field of a malformed or unknown value.
Vocabularies cover the dataset's whole feature space (from the metadata, not from the split rows), so a
value seen only in val/test still has an id. :func:`load_ctr` opens a dataset by name, or a user's
CSV / TSV / Parquet table (:mod:`recsys.data.ctr_table`, train-split vocabularies with OOV ids).

- **Frappe** (Baltrunas et al. 2015, libFM files of NFM, He & Chua 2017): the shared copy lacks the
  train file, so ``frappe.validation.libfm`` + ``frappe.test.libfm`` (86,582 rows) are concatenated and
  re-split 70/10/20 with a fixed seed. Ten fields with the published cardinalities (user 957, item 4082,
  daytime 7, weekday 7, isweekend 2, homework 3, cost 2, weather 9, country 80, city 233 = 5,382
  features); the libFM ids are already these global ids. A raw value is the field-local index.
- **MovieLens-100k CTR** (Harper & Konstan 2015): every rating is a row, click = rating >= 4. Fields
  user, item, age (MovieLens-1M buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+; the raw value is
  the age in years), gender, occupation, zip (the first character of the zip code: a region digit, or
  a letter for the few non-US codes) and genre (the item's *first* genre in ``u.genre`` order, one id
  per row rather than a multi-hot bag, so every field is one-hot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys.data.libfm import load_libfm, split_rows
from recsys.data.movielens import load_movielens
from recsys.data.table_file import first_row
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from recsys.data.ctr_table import TableCTRConfig

SPLIT = (0.7, 0.1, 0.2)
FRAPPE_FIELDS = (
    ("user", 957),
    ("item", 4082),
    ("daytime", 7),
    ("weekday", 7),
    ("isweekend", 2),
    ("homework", 3),
    ("cost", 2),
    ("weather", 9),
    ("country", 80),
    ("city", 233),
)
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
CLICK_RATING = 4

RawRow = Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True)
class CTRField:
    """One categorical field: ``cardinality`` ids; raw values are ``values`` (strings), or numbers cut
    into ``len(bins) + 1`` buckets at the ascending edges ``bins``, or (neither) field-local integers.

    With ``oov`` the field owns one more id, its last: a value outside the vocabulary, or a missing one
    (``None``, ``""``, NaN, and for a binned field any non-finite number), maps there instead of raising.
    Fields built from a user's table (:mod:`recsys.data.ctr_table`) have it, so a value first seen at
    serving time still gets a score.
    """

    name: str
    cardinality: int
    values: tuple[str, ...] | None = None
    bins: tuple[float, ...] | None = None
    oov: bool = False

    def __post_init__(self) -> None:
        if self.values is not None and len(self.values) + self.oov != self.cardinality:
            raise InputError(self.name, f"{len(self.values)} values (oov={self.oov}) for cardinality "
                                        f"{self.cardinality}")
        if self.bins is not None and len(self.bins) + 1 + self.oov != self.cardinality:
            raise InputError(self.name, f"{len(self.bins)} bin edges (oov={self.oov}) for cardinality "
                                        f"{self.cardinality}")

    def local_id(self, value: Any, row: int) -> int:
        """The field-local id of one raw value; :class:`InputError` names the field and the row."""
        if self.oov and _missing(value):
            return self.cardinality - 1
        if self.bins is not None:
            number = _number(value, self.name, row, finite=not self.oov)
            if not np.isfinite(number):
                return self.cardinality - 1
            return int(np.searchsorted(np.asarray(self.bins), number, side="right"))
        if self.values is not None:
            key = category_key(value)
            index = None if key is None else self._index().get(key)
            if index is None:
                if self.oov:
                    return self.cardinality - 1
                raise InputError(self.name, "missing value" if key is None else f"unknown value {value!r}",
                                 line=row)
            return index
        number = _number(value, self.name, row)
        if number != int(number) or not 0 <= number < self.cardinality:
            raise InputError(self.name, f"{value!r} is not an integer in [0, {self.cardinality})", line=row)
        return int(number)

    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup")
        if cached is None:
            cached = {v: i for i, v in enumerate(self.values or ())}
            object.__setattr__(self, "_lookup", cached)
        return cached


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float | np.floating) and not np.isfinite(value)


def category_key(value: Any) -> str | None:
    """The vocabulary key of a raw categorical value (``None``: missing), as :func:`category_keys` makes it
    for a whole column: strings stripped, booleans ``true`` / ``false``, integral floats as integers."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return None
        if float(value).is_integer():
            return str(int(value))
        return str(pl.Series([float(value)]).cast(pl.String)[0])  # polars' float text, as in columns
    return str(value).strip() or None


def category_keys(column: pl.Series) -> pl.Series:
    """:func:`category_key` of every value of a column (a String series, nulls for missing values)."""
    if column.dtype == pl.Boolean:
        keys = pl.select(pl.when(column).then(pl.lit("true")).otherwise(pl.lit("false"))).to_series()
        return keys.set(column.is_null(), None)
    if column.dtype.is_float():
        finite = column.is_finite().fill_null(False)
        integral = finite & (column == column.round())
        text = pl.select(pl.when(integral).then(column.cast(pl.Int64, strict=False).cast(pl.String))
                         .otherwise(column.cast(pl.String))).to_series()
        return text.set(~finite, None)
    text = column.cast(pl.String).str.strip_chars()
    return text.set(text == "", None)


def _number(value: Any, name: str, row: int, finite: bool = True) -> float:
    try:
        if isinstance(value, str) and "_" in value:  # Python reads "1_000"; a table column does not
            raise ValueError(value)
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(name, f"{value!r} is not a number", line=row) from None
    if finite and not np.isfinite(number):
        raise InputError(name, f"{value!r} is not a finite number", line=row)
    return number


@dataclass(frozen=True)
class CTRSchema:
    """The fields of a CTR dataset, in column order; field ``f`` owns ids ``offsets[f] ...``."""

    fields: tuple[CTRField, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def field_dims(self) -> list[int]:
        return [f.cardinality for f in self.fields]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.field_dims)[:-1]]).astype(np.int64)

    @property
    def num_features(self) -> int:
        return int(sum(self.field_dims))

    def encode(self, rows: Sequence[RawRow]) -> np.ndarray:
        """Raw rows (a mapping field -> value, or a sequence in field order) -> int64 ids ``[N, F]``.

        Raises :class:`InputError` whose source is the field name (``"row"`` for a row of the wrong
        length or with unknown field names) and whose line is the 1-based row number.
        """
        out = np.empty((len(rows), len(self.fields)), dtype=np.int64)
        offsets = self.offsets
        for r, raw in enumerate(rows, start=1):
            values = self._ordered(raw, r)
            for f, (spec, value) in enumerate(zip(self.fields, values, strict=True)):
                out[r - 1, f] = offsets[f] + spec.local_id(value, r)
        return out

    def _ordered(self, raw: RawRow, row: int) -> list[Any]:
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - set(self.names))
            if unknown:
                raise InputError("row", f"unknown field(s) {unknown} (fields: {self.names})", line=row)
            for spec in self.fields:
                if spec.name not in raw and not spec.oov:
                    raise InputError(spec.name, "missing value", line=row)
            return [raw.get(name) for name in self.names]
        if isinstance(raw, str | bytes) or len(raw) != len(self.fields):
            raise InputError("row", f"expected {len(self.fields)} values ({self.names})", line=row)
        return list(raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [
                {
                    "name": f.name,
                    "cardinality": f.cardinality,
                    "values": None if f.values is None else list(f.values),
                    "bins": None if f.bins is None else list(f.bins),
                    "oov": f.oov,
                }
                for f in self.fields
            ]
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CTRSchema:
        return cls(
            tuple(
                CTRField(
                    f["name"],
                    int(f["cardinality"]),
                    None if f.get("values") is None else tuple(f["values"]),
                    None if f.get("bins") is None else tuple(f["bins"]),
                    bool(f.get("oov", False)),
                )
                for f in data["fields"]
            )
        )


@dataclass
class CTRSplit:
    """Feature ids (int64 ``[N, F]``, global) and labels (float32 ``[N]``, 0/1)."""

    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class CTRDataset:
    """Train / val / test splits over one schema."""

    name: str
    schema: CTRSchema
    train: CTRSplit
    val: CTRSplit
    test: CTRSplit
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def field_names(self) -> list[str]:
        return self.schema.names

    @property
    def field_dims(self) -> list[int]:
        return self.schema.field_dims

    @property
    def num_fields(self) -> int:
        return len(self.schema.fields)

    @property
    def num_features(self) -> int:
        return self.schema.num_features


def split_dataset(
    name: str,
    schema: CTRSchema,
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    fractions: Sequence[float] = SPLIT,
    info: dict[str, Any] | None = None,
) -> CTRDataset:
    """Shuffle rows with ``seed`` and cut them into train / val / test by ``fractions``."""
    train, val, test = split_rows(len(labels), fractions, seed)
    parts = [
        CTRSplit(np.ascontiguousarray(features[i]), np.ascontiguousarray(labels[i]))
        for i in (train, val, test)
    ]
    meta = {"seed": seed, "fractions": list(fractions), "rows": len(labels), **(info or {})}
    return CTRDataset(name, schema, *parts, info=meta)


def _folder(root: str | Path | None, name: str) -> Path:
    if root is not None:
        return Path(root)
    path = dataset_path(name)
    if path is None:
        raise NotFoundError(f"dataset {name!r} not found under the data root (set SPARSEKIT_DATA)")
    return path


DATASETS = ("frappe", "movielens")


def data_identity(source: str | Path) -> dict[str, str]:
    """What a model was trained or calibrated on: a named dataset's name, or a table file's name and SHA-256
    (so ``compress ctr`` can tell a calibration table from the training table, whatever its path)."""
    if str(source) in DATASETS:
        return {"dataset": str(source)}
    from sparsekit.artifacts import sha256_file

    return {"table": Path(source).name, "sha256": sha256_file(Path(source))}


def same_data(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two :func:`data_identity` records name the same data: the same dataset, or the same bytes
    (a table's file name may differ)."""
    def key(d: Mapping[str, str]) -> str | None:
        return d.get("sha256") or d.get("dataset")

    return key(a) == key(b)


def load_ctr(
    source: str | Path,
    root: str | Path | None = None,
    seed: int = 0,
    table: TableCTRConfig | None = None,
    schema: CTRSchema | None = None,
) -> CTRDataset:
    """The CTR dataset ``source``: ``frappe``, ``movielens`` (from the data root or ``root``), or the path
    of a CSV / TSV / Parquet table read with ``table`` (a :class:`recsys.data.ctr_table.TableCTRConfig`).

    ``schema`` (a trained model's) encodes a table with that model's ids; for a named dataset it must
    equal the dataset's own schema.
    """
    if str(source) in DATASETS:
        loader = load_frappe_ctr if str(source) == "frappe" else load_movielens_ctr
        data = loader(root, seed=seed)
        if schema is not None and schema != data.schema:
            raise InputError("data", f"{source} does not have the fields the model was trained on "
                                     f"({schema.names})")
        return data
    from recsys.data.ctr_table import load_table_ctr
    from recsys.data.table_file import SUFFIXES, is_table_file

    if not is_table_file(source):
        raise InputError("data", f"{str(source)!r} is neither a dataset ({', '.join(DATASETS)}) nor a table "
                                 f"file ({', '.join(sorted(SUFFIXES))})")
    return load_table_ctr(source, table, seed=seed, schema=schema)


def frappe_schema() -> CTRSchema:
    return CTRSchema(tuple(CTRField(name, size) for name, size in FRAPPE_FIELDS))


def load_frappe_ctr(root: str | Path | None = None, seed: int = 0) -> CTRDataset:
    """Frappe validation + test libFM rows re-split 70/10/20 with ``seed`` (see the module docstring)."""
    folder = _folder(root, "frappe-libfm")
    schema = frappe_schema()
    parts = [
        load_libfm(folder / f"frappe.{n}.libfm", num_features=schema.num_features)
        for n in ("validation", "test")
    ]
    features = np.concatenate([p.features for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if features.shape[1] != len(schema.fields):
        raise InputError(folder, f"expected {len(schema.fields)} fields per row, got {features.shape[1]}")
    local = features - schema.offsets
    for f, spec in enumerate(schema.fields):
        if (bad := np.flatnonzero((local[:, f] < 0) | (local[:, f] >= spec.cardinality))).size:
            raise InputError(
                folder,
                f"row {bad[0]}: field {spec.name!r} has id {features[bad[0], f]} outside "
                f"its range [{schema.offsets[f]}, {schema.offsets[f] + spec.cardinality})",
            )
    return split_dataset("frappe", schema, features, labels, seed)


def movielens_schema(users: pl.DataFrame, items: pl.DataFrame, genres: Sequence[str]) -> CTRSchema:
    """The seven MovieLens CTR fields; vocabularies come from ``u.user`` / ``u.item`` / ``u.genre``."""
    occupations = tuple(sorted(set(users["occupation"].to_list())))
    zips = tuple(sorted({_zip_region(z) for z in users["zip"].to_list()}))
    return CTRSchema(
        (
            CTRField("user", users.height, tuple(str(u) for u in users["id"].sort().to_list())),
            CTRField("item", items.height, tuple(str(i) for i in items["id"].sort().to_list())),
            CTRField("age", len(AGE_LABELS), bins=tuple(float(e) for e in AGE_EDGES)),
            CTRField("gender", 2, ("F", "M")),
            CTRField("occupation", len(occupations), occupations),
            CTRField("zip", len(zips), zips),
            CTRField("genre", len(genres), tuple(genres)),
        )
    )


def _zip_region(zip_code: str) -> str:
    code = zip_code.strip().upper()
    return code[:1] if code else "?"


def _first_genre(genres: pl.Series, unknown: str) -> pl.Series:
    return genres.list.first().fill_null(unknown)


def load_movielens_ctr(root: str | Path | None = None, seed: int = 0) -> CTRDataset:
    """MovieLens-100k ratings as CTR rows (click = rating >= 4), split 70/10/20 with ``seed``."""
    folder = _folder(root, "movielens-100k")
    if not (folder / "u.data").is_file() and (folder / "ml-100k" / "u.data").is_file():
        folder = folder / "ml-100k"
    ml = load_movielens(folder)
    schema = movielens_schema(ml.users, ml.items, ml.genres)
    users = ml.users.with_columns(pl.col("zip").map_elements(_zip_region, return_dtype=pl.String))
    items = ml.items.with_columns(_first_genre(ml.items["genres"], ml.genres[0]).alias("genre"))
    rows = ml.ratings.join(users.rename({"id": "user"}), on="user", how="left").join(
        items.select(pl.col("id").alias("item"), "genre"), on="item", how="left"
    )
    columns = {
        "user": rows["user"].cast(pl.String),
        "item": rows["item"].cast(pl.String),
        "age": rows["age"],
        "gender": rows["gender"],
        "occupation": rows["occupation"],
        "zip": rows["zip"],
        "genre": rows["genre"],
    }
    features = np.stack(
        [
            encode_column(spec, columns[spec.name], offset)
            for spec, offset in zip(schema.fields, schema.offsets, strict=True)
        ],
        axis=1,
    )
    labels = (rows["rating"].to_numpy() >= CLICK_RATING).astype(np.float32)
    return split_dataset("movielens-100k", schema, features, labels, seed, info={"click": "rating >= 4"})


def encode_column(spec: CTRField, column: pl.Series, offset: int = 0) -> np.ndarray:
    """Vectorized :meth:`CTRField.local_id` over a whole column (+ the field offset)."""
    if spec.bins is not None:
        if column.dtype == pl.String:
            column = column.str.strip_chars()
        numbers = column.cast(pl.Float64, strict=False)
        bad = column.is_not_null() & numbers.is_null()
        if column.dtype == pl.String:
            bad &= column != ""
        if bad.any():
            row = first_row(bad)
            raise InputError(spec.name, f"row {row + 1}: {column[row]!r} is not a number")
        values = numbers.fill_nan(None).to_numpy().astype(np.float64)
        missing = ~np.isfinite(values)
        if missing.any() and not spec.oov:
            raise InputError(spec.name, "missing or non-finite value")
        local = np.searchsorted(np.asarray(spec.bins), np.where(missing, 0.0, values), side="right")
        local[missing] = spec.cardinality - 1
    else:
        index = pl.DataFrame({"value": list(spec.values or ()), "local": np.arange(len(spec.values or ()))},
                             schema={"value": pl.String, "local": pl.Int64})
        joined = pl.DataFrame({"value": category_keys(column)}).join(index, on="value", how="left",
                                                                      maintain_order="left")
        if joined["local"].null_count():
            if not spec.oov:
                bad = joined.filter(pl.col("local").is_null())["value"][0]
                raise InputError(spec.name, f"unknown value {bad!r}")
            joined = joined.with_columns(pl.col("local").fill_null(spec.cardinality - 1))
        local = joined["local"].to_numpy()
    return local.astype(np.int64) + offset
