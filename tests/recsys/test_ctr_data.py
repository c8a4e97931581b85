"""CTR data: the schema's raw-value encoding, seeded splits, Frappe and MovieLens CTR construction,
and the synthetic power-law generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recsys.data.ctr import (
    CTRField,
    CTRSchema,
    frappe_schema,
    load_frappe_ctr,
    load_movielens_ctr,
    split_dataset,
)
from recsys.data.synthetic_ctr import SyntheticCTRConfig, make_synthetic_ctr, planted_logits, synthetic_chunks
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError

SCHEMA = CTRSchema(
    (
        CTRField("color", 3, ("red", "green", "blue")),
        CTRField("age", 3, bins=(18.0, 30.0)),
        CTRField("slot", 4),
    )
)


def _real(name: str) -> Path:
    path = dataset_path(name)
    if path is None:
        pytest.skip(f"dataset {name!r} not found under the data root (set SPARSEKIT_DATA)")
    return path


# ---- schema ---------------------------------------------------------------------------------------


def test_encode_applies_vocabularies_bins_and_offsets() -> None:
    rows = [
        {"color": "green", "age": 17, "slot": 3},
        ["blue", "30", "0"],
        {"color": " red ", "age": 18.5, "slot": 1},
    ]
    assert SCHEMA.offsets.tolist() == [0, 3, 6]
    assert SCHEMA.encode(rows).tolist() == [[1, 3, 9], [2, 5, 6], [0, 4, 7]]


@pytest.mark.parametrize(
    ("row", "source", "match"),
    [
        ({"color": "pink", "age": 1, "slot": 0}, "color", "unknown value 'pink'"),
        ({"color": "red", "age": "old", "slot": 0}, "age", "not a number"),
        ({"color": "red", "age": float("nan"), "slot": 0}, "age", "not a finite"),
        ({"color": "red", "age": 3, "slot": 4}, "slot", r"not an integer in \[0, 4\)"),
        ({"color": "red", "age": 3, "slot": 1.5}, "slot", "not an integer"),
        ({"color": "red", "age": 3}, "slot", "missing"),
        ({"color": "red", "age": 3, "slot": 0, "size": 2}, "row", "unknown field"),
        (["red", 3], "row", "expected 3 values"),
    ],
)
def test_encode_names_the_field_and_row(row, source: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        SCHEMA.encode([{"color": "red", "age": 1, "slot": 0}, row])
    assert info.value.source == source
    assert info.value.line == 2


def test_schema_round_trips_through_dict() -> None:
    again = CTRSchema.from_dict(SCHEMA.to_dict())
    assert again == SCHEMA
    assert again.encode([["blue", 99, 2]]).tolist() == [[2, 5, 8]]


def test_field_spec_checks_its_vocabulary() -> None:
    with pytest.raises(InputError):
        CTRField("x", 3, ("a", "b"))
    with pytest.raises(InputError):
        CTRField("x", 3, bins=(1.0,))


def test_split_is_seeded_disjoint_and_70_10_20() -> None:
    features = np.arange(2000, dtype=np.int64).reshape(1000, 2) % 3
    labels = (np.arange(1000) % 2).astype(np.float32)
    schema = CTRSchema((CTRField("a", 3), CTRField("b", 3)))
    one, two = (
        split_dataset("t", schema, features, labels, seed=5),
        split_dataset("t", schema, features, labels, seed=5),
    )
    assert (len(one.train), len(one.val), len(one.test)) == (700, 100, 200)
    assert np.array_equal(one.test.features, two.test.features)
    other = split_dataset("t", schema, features, labels, seed=6)
    assert not np.array_equal(one.test.labels, other.test.labels) or not np.array_equal(
        one.test.features, other.test.features
    )
    assert one.train.features.dtype == np.int64 and one.train.labels.dtype == np.float32


# ---- Frappe ---------------------------------------------------------------------------------------


def _frappe_folder(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "frappe.validation.libfm").write_text("\n".join(rows[:2]) + "\n")
    (tmp_path / "frappe.test.libfm").write_text("\n".join(rows[2:]) + "\n")
    return tmp_path


def _frappe_row(label: int, ids: list[int]) -> str:
    return f"{label} " + " ".join(f"{i}:1" for i in ids)


def test_frappe_rows_keep_libfm_ids(tmp_path: Path) -> None:
    offsets = frappe_schema().offsets
    rows = [_frappe_row(1 if r % 2 else -1, [int(o) + r for o in offsets]) for r in range(2)] * 5
    data = load_frappe_ctr(_frappe_folder(tmp_path, rows), seed=1)
    assert data.num_features == 5382 and data.num_fields == 10
    assert data.field_names[:3] == ["user", "item", "daytime"]
    everything = np.concatenate([data.train.features, data.val.features, data.test.features])
    assert set(map(tuple, everything.tolist())) == {tuple(int(o) + r for o in offsets) for r in range(2)}
    assert (
        sorted(np.concatenate([data.train.labels, data.val.labels, data.test.labels]).tolist())
        == [0] * 5 + [1] * 5
    )


def test_frappe_id_in_the_wrong_field_is_an_error(tmp_path: Path) -> None:
    ids = [int(o) for o in frappe_schema().offsets]
    ids[2] = 3  # a user id in the daytime column
    with pytest.raises(InputError, match="daytime"):
        load_frappe_ctr(_frappe_folder(tmp_path, [_frappe_row(1, ids)] * 3))


@pytest.mark.data
def test_real_frappe_split() -> None:
    data = load_frappe_ctr(_real("frappe-libfm"), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (60607, 8659, 17316)
    assert data.field_dims == [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]
    local = data.train.features - frappe_schema().offsets
    assert (local >= 0).all() and (local < np.asarray(data.field_dims)).all()
    assert 0.3 < data.train.labels.mean() < 0.36  # 1 positive : 2 sampled negatives


# ---- MovieLens --------------------------------------------------------------------------------------


def _movielens_folder(tmp_path: Path) -> Path:
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n3|17|M|student|0\n")
    (tmp_path / "u.item").write_text(
        "1|A (1995)|01-Jan-1995||url|0|1|1\n2|B (1996)|01-Jan-1996||url|0|0|1\n"
        "3|C (1997)|01-Jan-1997||url|1|0|0\n",
        encoding="latin-1",
    )
    ratings = [
        (1, 1, 5),
        (1, 2, 3),
        (2, 3, 4),
        (3, 1, 1),
        (3, 2, 4),
        (2, 1, 2),
        (1, 3, 4),
        (3, 3, 5),
        (2, 2, 1),
        (1, 1, 4),
    ]
    (tmp_path / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t88{n}\n" for n, (u, i, r) in enumerate(ratings))
    )
    return tmp_path


def test_movielens_ctr_fields(tmp_path: Path) -> None:
    data = load_movielens_ctr(_movielens_folder(tmp_path), seed=0)
    assert data.field_names == ["user", "item", "age", "gender", "occupation", "zip", "genre"]
    assert data.field_dims == [3, 3, 7, 2, 3, 3, 3]
    schema = data.schema
    assert schema.fields[5].values == ("0", "8", "T")  # first character of the zip code
    rows = np.concatenate([data.train.features, data.val.features, data.test.features])
    labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
    assert len(rows) == 10 and labels.sum() == 6  # rating >= 4 is a click
    # user 2: age 53 -> "50-55", F, other, zip T..; item 3's first genre is "unknown"
    expected = schema.encode(
        [
            {
                "user": 2,
                "item": 3,
                "age": 53,
                "gender": "F",
                "occupation": "other",
                "zip": "T",
                "genre": "unknown",
            }
        ]
    )[0]
    assert expected.tolist() in rows.tolist()
    # item 1 is Action and Comedy: the first genre (u.genre order) is Action; user 3 (17) is "<18"
    item1_user3 = schema.encode([[3, 1, 17, "M", "student", "0", "Action"]])[0]
    assert item1_user3.tolist() in rows.tolist()
    assert rows[:, 2].min() >= schema.offsets[2]


@pytest.mark.data
def test_real_movielens_ctr() -> None:
    data = load_movielens_ctr(_real("movielens-100k"), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (70000, 10000, 20000)
    assert data.field_dims[:5] == [943, 1682, 7, 2, 21] and data.field_dims[6] == 19
    assert 0.5 < data.train.labels.mean() < 0.6  # 55% of ratings are >= 4


# ---- synthetic --------------------------------------------------------------------------------------


def test_synthetic_shapes_ranges_and_determinism() -> None:
    config = SyntheticCTRConfig(field_dims=(50, 20, 5), num_rows=3000, chunk_rows=700, seed=3)
    data = make_synthetic_ctr(config)
    assert (len(data.train), len(data.val), len(data.test)) == (2100, 300, 600)
    assert data.num_features == 75 and data.field_dims == [50, 20, 5]
    local = data.train.features - data.schema.offsets
    assert (local >= 0).all() and (local < np.asarray([50, 20, 5])).all()
    again = make_synthetic_ctr(config)
    assert np.array_equal(again.train.features, data.train.features)
    assert np.array_equal(again.train.labels, data.train.labels)
    assert sum(len(c[1]) for c in synthetic_chunks(config)) == 3000
    assert max(len(c[1]) for c in synthetic_chunks(config)) == 700


def test_synthetic_frequencies_follow_zipf() -> None:
    config = SyntheticCTRConfig(field_dims=(5000,), num_rows=200_000, zipf_a=1.2, interaction_dim=0, seed=1)
    features = np.concatenate([c[0] for c in synthetic_chunks(config)])[:, 0]
    counts = np.sort(np.bincount(features, minlength=5000))[::-1]
    ranks = np.arange(5, 200)
    slope = np.polyfit(np.log(ranks + 1), np.log(counts[ranks]), 1)[0]
    assert slope == pytest.approx(-1.2, abs=0.1)
    assert np.argmax(np.bincount(features)) != 0  # popular ranks are scattered over the ids


def test_synthetic_labels_follow_the_planted_model() -> None:
    config = SyntheticCTRConfig(field_dims=(300, 300, 30, 10), num_rows=20_000, seed=2)
    features, labels = next(synthetic_chunks(SyntheticCTRConfig(**{**config.__dict__, "chunk_rows": 20_000})))
    assert roc_auc_score(labels, planted_logits(config, features)) > 0.75
    assert 0.05 < labels.mean() < 0.95


def test_synthetic_scales_to_20m_features_in_chunks() -> None:
    config = SyntheticCTRConfig(field_dims=(12_000_000, 8_000_000, 1000), num_rows=5000, chunk_rows=1000)
    data = make_synthetic_ctr(config)
    assert data.num_features == 20_001_000
    everything = np.concatenate([data.train.features, data.val.features, data.test.features])
    assert everything[:, 0].max() < 12_000_000 <= everything[:, 1].min()
    assert everything[:, 1].max() < 20_000_000 <= everything[:, 2].min()
    assert data.schema.encode([[11_999_999, 0, 999]]).tolist() == [[11_999_999, 12_000_000, 20_000_999]]
