"""Recsys data loaders: LightGCN implicit splits, MovieLens 100K, libFM CTR rows and Planetoid graphs.

Bad input must raise InputError naming the file and the 1-based line; real-data tests check the
published counts and skip when the dataset folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data.implicit import ImplicitDataset, load_implicit
from recsys.data.libfm import LibfmData, load_libfm, split_rows
from recsys.data.movielens import MovieLens, load_movielens
from recsys.data.planetoid import load_planetoid, raw_file_names
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError


def _real(name: str) -> Path:
    path = dataset_path(name)
    if path is None:
        pytest.skip(f"dataset {name!r} not found under the data root (set SPARSEKIT_DATA)")
    return path


def _raises(match: str, fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    return info.value


# ---- implicit (LightGCN train.txt / test.txt) -----------------------------------------------------


def _implicit(tmp_path: Path, train: str, test: str = "0 3\n1\n") -> Path:
    (tmp_path / "train.txt").write_text(train, encoding="utf-8")
    (tmp_path / "test.txt").write_text(test, encoding="utf-8")
    return tmp_path


def test_implicit_builds_binary_csr(tmp_path: Path) -> None:
    folder = _implicit(tmp_path, "0 0 1 1\n1 2\n2\n", test="0 3\n1 4\n2 0\n")
    data = load_implicit(folder)
    assert isinstance(data, ImplicitDataset)
    assert (data.num_users, data.num_items) == (3, 5)
    assert data.train.shape == data.test.shape == (3, 5)
    assert data.train.toarray().tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert data.test.toarray().tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]
    assert data.train.nnz == 3  # the repeated item counts once


def test_implicit_user_only_in_test_widens_shape(tmp_path: Path) -> None:
    data = load_implicit(_implicit(tmp_path, "0 1\n", test="0 2\n4 0\n"))
    assert (data.num_users, data.num_items) == (5, 3)
    assert data.train[4].nnz == 0


def test_implicit_on_a_file_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match=r"expected a LightGCN-style folder holding train\.txt"):
        load_implicit(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize(
    ("train", "line", "match"),
    [
        ("0 1 2\n1 2 x\n", 2, r"token 'x' is not an integer id"),
        ("0 1 2\n1 2.5\n", 2, r"token '2.5' is not an integer id"),
        ("0 1\n1 2\nu3 4\n", 3, r"token 'u3' is not an integer id"),
        ("0 1\n-1 2\n", 2, r"negative user id -1"),
        ("0 1 -7\n", 1, r"negative item id -7"),
        ("0 1\n1 2\n\n0 3\n", 4, r"duplicate line for user 0 \(first on line 1\)"),
    ],
)
def test_implicit_errors(tmp_path: Path, train: str, line: int, match: str) -> None:
    err = _raises(rf"train\.txt:{line}: {match}", load_implicit, _implicit(tmp_path, train))
    assert err.line == line


def test_implicit_empty_train_file_is_named(tmp_path: Path) -> None:
    _raises(r"train\.txt: no interactions", load_implicit, _implicit(tmp_path, ""))
    _raises(r"train\.txt: no interactions", load_implicit, _implicit(tmp_path, "0\n1\n"))


def test_implicit_raw_user_id_is_named_not_allocated(tmp_path: Path) -> None:
    """A user id of 10**12 would make terabytes of CSR row pointers."""
    err = _raises(r"test\.txt: user id 1000000000000 needs .* GiB of row pointers", load_implicit,
                  _implicit(tmp_path, "0 1 2\n1 2\n", test="0 3\n1000000000000 2\n"))
    assert err.line is None
    data = load_implicit(_implicit(tmp_path, "0 1 2\n100000 91591\n", test="0 3\n"))  # gaps that fit
    assert (data.num_users, data.num_items) == (100001, 91592)


def test_implicit_error_in_test_file(tmp_path: Path) -> None:
    folder = _implicit(tmp_path, "0 1\n", test="0 2\n1 b\n")
    _raises(r"test\.txt:2: token 'b' is not an integer id", load_implicit, folder)


def test_implicit_missing_file(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("0 1\n", encoding="utf-8")
    err = _raises(r"test\.txt: file not found", load_implicit, tmp_path)
    assert err.source == str(tmp_path / "test.txt")


@pytest.mark.data
def test_gowalla_counts() -> None:
    data = load_implicit(_real("gowalla-lightgcn"))
    assert (data.num_users, data.num_items) == (29858, 40981)
    assert (data.train.nnz, data.test.nnz) == (810128, 217242)
    assert data.train.multiply(data.test).nnz == 0
    assert set(np.unique(data.train.data)) == {1.0}
    assert (np.diff(data.train.indptr) > 0).all() and (np.diff(data.test.indptr) > 0).all()


# ---- MovieLens 100K -------------------------------------------------------------------------------

GENRES = ["unknown", "Action", "Comedy"]


def _item(item_id: int, title: str, flags: str) -> str:
    return f"{item_id}|{title}|01-Jan-1995||http://x|{flags}\n"


def _movielens(
    tmp_path: Path, data: str | None = None, user: str | None = None, item: str | None = None
) -> Path:
    genres = "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n"  # trailing blank line, as in ml-100k
    (tmp_path / "u.genre").write_text(genres, encoding="utf-8")
    users = user or "1|24|M|technician|85711\n2|53|F|other|T8H1N\n"
    (tmp_path / "u.user").write_text(users, encoding="utf-8")
    items = item or _item(1, "Toy Story (1995)", "0|1|1") + _item(2, "Misérables, Les (1995)", "0|0|0")
    (tmp_path / "u.item").write_bytes(items.encode("latin-1"))
    ratings = data or "1\t1\t5\t881250949\n2\t2\t1\t891717742\n1\t2\t3\t878887116\n"
    (tmp_path / "u.data").write_text(ratings, encoding="utf-8")
    return tmp_path


def test_movielens_frames(tmp_path: Path) -> None:
    ml = load_movielens(_movielens(tmp_path))
    assert isinstance(ml, MovieLens)
    assert ml.ratings.columns == ["user", "item", "rating", "timestamp"]
    assert ml.ratings.rows() == [(1, 1, 5, 881250949), (2, 2, 1, 891717742), (1, 2, 3, 878887116)]
    assert ml.users.columns == ["id", "age", "gender", "occupation", "zip"]
    assert ml.users.row(1) == (2, 53, "F", "other", "T8H1N")
    assert ml.items.columns == ["id", "title", "genres"]
    assert ml.items["title"].to_list() == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert ml.items["genres"].to_list() == [["Action", "Comedy"], []]
    assert ml.genres == GENRES


@pytest.mark.parametrize(
    ("kind", "text", "file", "line", "match"),
    [
        ("data", "1\t1\t5\t1\n1\t2\t3\n", "u.data", 2, r"expected 4 '\\t'-separated fields, got 3"),
        ("data", "1\t1\t5\t1\n1\t2\t6\t1\n", "u.data", 2, r"field 'rating': 6 is outside 1..5"),
        ("data", "1\t1\t0\t1\n", "u.data", 1, r"field 'rating': 0 is outside 1..5"),
        ("data", "1\t1\tfive\t1\n", "u.data", 1, r"field 'rating': 'five' is not an integer"),
        ("data", "1\t1\t5\t1\n9\t1\t5\t1\n", "u.data", 2, r"field 'user': unknown user id 9"),
        ("data", "1\t1\t5\t1\n1\t3\t5\t1\n", "u.data", 2, r"field 'item': unknown item id 3"),
        ("user", "1|24|M|technician\n", "u.user", 1, r"expected 5 '\|'-separated fields, got 4"),
        ("user", "1|24|M|a|1\n1|30|F|b|2\n", "u.user", 2, r"field 'id': duplicate 1 \(first on line 1\)"),
        ("user", "1|old|M|a|1\n", "u.user", 1, r"field 'age': 'old' is not an integer"),
        ("item", _item(1, "A", "0|1"), "u.item", 1, r"expected 8 '\|'-separated fields, got 7"),
        ("item", _item(1, "A", "0|1|0") + _item(2, "B", "0|2|0"), "u.item", 2, r"field 'genre:Action': '2'"),
    ],
)
def test_movielens_errors(tmp_path: Path, kind: str, text: str, file: str, line: int, match: str) -> None:
    folder = _movielens(tmp_path, **{kind: text})
    err = _raises(rf"{file.replace('.', '[.]')}:{line}: {match}", load_movielens, folder)
    assert err.line == line
    assert err.source == str(folder / file)


def test_movielens_missing_file(tmp_path: Path) -> None:
    folder = _movielens(tmp_path)
    (folder / "u.user").unlink()
    _raises(r"u\.user: file not found", load_movielens, folder)


@pytest.mark.data
def test_movielens_100k_counts() -> None:
    ml = load_movielens(_real("movielens-100k"))
    assert ml.ratings.height == 100000
    assert ml.users.height == 943 and ml.items.height == 1682
    assert ml.ratings["user"].n_unique() == 943 and ml.ratings["item"].n_unique() == 1682
    assert sorted(ml.ratings["rating"].unique().to_list()) == [1, 2, 3, 4, 5]
    assert len(ml.genres) == 19
    toy = ml.items.filter(pl.col("id") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert ml.items.filter(pl.col("title").str.contains("Misérables")).height == 1  # latin-1 decoded
    split = load_movielens(_real("movielens-100k"), ratings_file="ua.test")
    assert split.ratings.height == 9430


# ---- libFM one-hot CTR rows -----------------------------------------------------------------------


def _libfm(tmp_path: Path, text: str, name: str = "rows.libfm") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_libfm_parses_rows(tmp_path: Path) -> None:
    data = load_libfm(_libfm(tmp_path, "-1 0:1 5:1 9:1\n1 2:1 6:1 8:1\n\n1 1:1 5:1 7:1\n"))
    assert isinstance(data, LibfmData)
    assert data.labels.dtype == np.float32 and data.labels.tolist() == [0.0, 1.0, 1.0]
    assert data.features.dtype == np.int64
    assert data.features.tolist() == [[0, 5, 9], [2, 6, 8], [1, 5, 7]]
    assert (data.num_rows, data.num_fields, data.num_features) == (3, 3, 10)
    assert load_libfm(_libfm(tmp_path, "0 1:1\n1 3:1\n", "b.libfm"), num_features=20).num_features == 20
    assert load_libfm(_libfm(tmp_path, "0 1:1\n1 3:1.0\n", "c.libfm")).labels.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("1 0:1 1:1\n2 0:1 1:1\n", 2, r"label '2' is not one of -1, 0, 1"),
        ("yes 0:1 1:1\n", 1, r"label 'yes' is not one of -1, 0, 1"),
        ("-1 0:1 1:1\n1 0:1 1:1\n0 0:1 1:1\n", 3, r"labels mix -1 and 0 \(first on line 1\)"),
        ("1 0:1 1:1\n0 0:1 1\n", 2, r"token '1' is not 'id:value'"),
        ("1 0:1 a:1\n", 1, r"token 'a:1' is not 'id:value'"),
        ("1 0:1 1:1:1\n", 1, r"token '1:1:1' is not 'id:value'"),
        ("1 0:1 1:x\n", 1, r"token '1:x' is not 'id:value'"),
        ("1 0:1 1:1\n1 0:1 4:0.5\n", 2, r"feature value in '4:0.5' must be 1"),
        ("1 0:1 1:1\n1 0:1 -4:1\n", 2, r"negative feature id in '-4:1'"),
        ("1 0:1 1:1\n0 0:1 1:1 2:1\n", 2, r"expected 2 features \(as on line 1\), got 3"),
        ("1\n", 1, r"row has no features"),
    ],
)
def test_libfm_errors(tmp_path: Path, text: str, line: int, match: str) -> None:
    err = _raises(rf"rows\.libfm:{line}: {match}", load_libfm, _libfm(tmp_path, text))
    assert err.line == line


def test_libfm_id_out_of_range_and_missing(tmp_path: Path) -> None:
    path = _libfm(tmp_path, "1 0:1 1:1\n0 0:1 9:1\n")
    _raises(r"rows\.libfm:2: feature id in '9:1' is out of range \(num_features=5\)", load_libfm, path, 5)
    _raises(r"nope\.libfm: file not found", load_libfm, tmp_path / "nope.libfm")
    _raises(r"empty\.libfm: no rows", load_libfm, _libfm(tmp_path, "\n", "empty.libfm"))


def test_split_rows_is_deterministic_disjoint_and_covering() -> None:
    parts = split_rows(1000, seed=3)
    assert [len(p) for p in parts] == [700, 100, 200]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    again = split_rows(1000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split_rows(1000, seed=4)
    assert not np.array_equal(parts[0], other[0])
    assert [len(p) for p in split_rows(10)] == [7, 1, 2]
    assert sorted(len(p) for p in split_rows(5, fractions=(0.5, 0.5))) == [2, 3]
    with pytest.raises(ValueError, match="sum to 1"):
        split_rows(10, fractions=(0.5, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        split_rows(10, fractions=(1.2, -0.2))


@pytest.mark.data
def test_frappe_counts() -> None:
    root = _real("frappe-libfm")
    val = load_libfm(root / "frappe.validation.libfm")
    test = load_libfm(root / "frappe.test.libfm")
    assert (val.num_rows, test.num_rows) == (57722, 28860)
    assert val.num_fields == test.num_fields == 10
    assert int(val.features.max()) == 5381 and int(test.features.max()) == 5377
    assert (int(val.labels.sum()), int(test.labels.sum())) == (19063, 9536)
    # one feature per field: each column's ids lie in a range disjoint from the next column's
    assert (val.features[:, :-1].max(axis=0) < val.features[:, 1:].min(axis=0)).all()


# ---- Planetoid (Cora via PyG) ---------------------------------------------------------------------


def test_planetoid_missing_raw_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    err = _raises(r"Cora/raw: Planetoid raw folder not found", load_planetoid, tmp_path, "Cora", cache)
    assert all(name in str(err) for name in raw_file_names("Cora"))
    assert err.source == str(tmp_path / "Cora" / "raw")
    assert not cache.exists()


def test_planetoid_missing_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in raw_file_names("Cora")[:-1]:
        (raw / name).write_bytes(b"")
    _raises(r"missing raw files ind\.cora\.test\.index; expected ind\.cora\.x", load_planetoid, tmp_path)


@pytest.mark.data
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # PyG import
def test_cora(tmp_path: Path) -> None:
    root = _real("planetoid")
    data = load_planetoid(root, "Cora", cache_dir=tmp_path)
    assert (data.num_nodes, data.num_features) == (2708, 1433)
    assert int(data.y.max()) + 1 == 7
    masks = (data.train_mask, data.val_mask, data.test_mask)
    assert [int(m.sum()) for m in masks] == [140, 500, 1000]
    assert not (data.train_mask & data.test_mask).any()
    assert data.edge_index.shape == (2, 10556)
    assert sorted(p.name for p in (tmp_path / "Cora" / "raw").iterdir()) == sorted(raw_file_names("Cora"))
    again = load_planetoid(root, "Cora", cache_dir=tmp_path)  # served from the processed cache
    assert again.num_nodes == 2708


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_implicit_reads_any_line_end(tmp_path: Path, end: str) -> None:
    folder = tmp_path / end.encode().hex()
    folder.mkdir()
    (folder / "train.txt").write_bytes(end.join(["0 1 2", "1 2", "2 0"]).encode() + end.encode())
    (folder / "test.txt").write_bytes(end.join(["0 3", "1 3", "2 3"]).encode() + end.encode())
    data = load_implicit(folder)
    assert data.train.shape[0] == 3 and data.train.nnz == 4
