"""Interaction logs from a user's own table (recsys.data.interactions_table): raw ids to rows, per-user
temporal or seeded random holdout, duplicates once, clear errors, and raw ids kept with the model."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.data.interactions_table import InteractionsConfig, load_interactions_table
from recsys.id_vocab import FILE, IdVocab
from recsys.sparse_export import export_sparse
from recsys.training.cf import CFTrainConfig, save_model, train_cf
from services.cli import app
from services.recommend_service import load_recommender
from sparsekit.errors import ArtifactError, InputError, NotFoundError

LOG = pl.DataFrame({
    "who": ["ann", "ann", "ann", "ann", "ann", "bob", "bob", "cy", "ann"],
    "what": ["x", "y", "z", "w", "v", "x", "y", "x", "x"],
    "ts": [1, 2, 3, 4, 5, 2, 1, 1, 9],
})
TEMPORAL = InteractionsConfig(user="who", item="what", time="ts")


def _dense(data) -> dict[str, set[str]]:
    out = {}
    for name, matrix in (("train", data.train), ("test", data.test)):
        rows, cols = matrix.nonzero()
        out[name] = {f"{data.user_ids[r]}:{data.item_ids[c]}" for r, c in zip(rows, cols, strict=True)}
    return out


def test_temporal_split_holds_out_each_users_latest_items(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    LOG.write_csv(path)
    data = load_interactions_table(path, TEMPORAL)
    assert data.user_ids == ("ann", "bob", "cy") and data.item_ids == ("v", "w", "x", "y", "z")
    assert (data.num_users, data.num_items) == (3, 5)
    split = _dense(data)
    # ann has 5 distinct items (x twice: its first time, 1, counts) -> her latest, v, is test
    assert split["test"] == {"ann:v"}
    assert split["train"] == {"ann:x", "ann:y", "ann:z", "ann:w", "bob:x", "bob:y", "cy:x"}
    assert data.train.max() == 1.0 and data.test.max() == 1.0


def test_random_split_is_seeded_per_user_and_keeps_one_train_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 200, 20000), rng.zipf(1.3, 20000) % 1000
    path = tmp_path / "log.parquet"
    pl.DataFrame({"user": users.astype(str), "item": items.astype(str)}).write_parquet(path)
    a, b = load_interactions_table(path, seed=3), load_interactions_table(path, seed=3)
    c = load_interactions_table(path, seed=4)
    assert (a.test != b.test).nnz == 0 and (a.test != c.test).nnz > 0
    assert a.train.multiply(a.test).nnz == 0  # disjoint
    pairs = len({(u, i) for u, i in zip(users, items, strict=True)})
    assert a.train.nnz + a.test.nnz == pairs
    assert 0.18 < a.test.nnz / pairs < 0.22
    assert (np.diff(a.train.indptr) >= 1).all()  # every user keeps a train item


@pytest.mark.parametrize("times", [
    ["2024-01-01T10:00:00", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-02",
     "2024-01-01", "2024-01-01", "2024-02-01"],
    [datetime(2024, 1, 1) + timedelta(days=int(t)) for t in LOG["ts"]],
])
def test_date_time_columns_order_the_split(tmp_path: Path, times: list) -> None:
    path = tmp_path / "log.parquet"
    LOG.with_columns(pl.Series("ts", times)).write_parquet(path)
    assert _dense(load_interactions_table(path, TEMPORAL))["test"] == {"ann:v"}


@pytest.mark.parametrize(("frame", "config", "match"), [
    (LOG, InteractionsConfig(user="who", item="item"), r"column\(s\) \['item'\]"),
    (LOG.with_columns(pl.Series("ts", ["1", "2", "soon", "4", "5", "6", "7", "8", "9"])), TEMPORAL,
     r"log\.csv: column 'ts': row 3: 'soon' is neither a number nor a date-time"),
    (LOG.with_columns(pl.Series("ts", ["2024-01-01", "2024-01-02", "later", "2024-01-04", "2024-01-05",
                                       "2024-01-06", "2024-01-07", "2024-01-08", "2024-01-09"])), TEMPORAL,
     r"row 3: 'later' is neither a number nor a date-time"),  # not row 1, the first date
    (LOG.with_columns(pl.Series("ts", ["2024-01-01", "2024-01-02", "2024-01-03", "17", "2024-01-05",
                                       "2024-01-06", "2024-01-07", "2024-01-08", "2024-01-09"])), TEMPORAL,
     r"row 4: '17' is a number in a column of date-times"),
    (LOG.with_columns(pl.Series("who", ["ann", None, "ann", "ann", "ann", "bob", "bob", "cy", "ann"])),
     TEMPORAL, r"log\.csv: column 'who': row 2: missing id"),
    (LOG.head(0), TEMPORAL, "no rows"),
])
def test_bad_logs_get_errors_that_name_the_problem(
    tmp_path: Path, frame: pl.DataFrame, config: InteractionsConfig, match: str
) -> None:
    path = tmp_path / "log.csv"
    frame.write_csv(path)
    with pytest.raises(InputError, match=match):
        load_interactions_table(path, config)
    with pytest.raises(InputError, match="test_fraction"):
        InteractionsConfig(test_fraction=1.0)


def test_raw_ids_travel_with_dense_and_sparse_models(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    LOG.write_csv(path)
    data = load_interactions_table(path, TEMPORAL)
    ids = IdVocab.of(data)
    model, _ = train_cf(CFTrainConfig(model="mf", dim=4, epochs=1, batch_size=8, progress=False), data)
    save_model(model, tmp_path / "dense", ids=ids)
    export_sparse(model, tmp_path / "sparse", ids=ids)
    for name in ("dense", "sparse"):
        served = load_recommender(tmp_path / name)
        assert served.ids == ids and served.ids.user_row("bob") == 1
        with pytest.raises(NotFoundError, match="'dan'"):
            served.ids.user_row("dan")
    assert IdVocab.read(tmp_path / "dense", (3, 5)) == ids
    with pytest.raises(ArtifactError, match="3 users x 5 items"):
        IdVocab.read(tmp_path / "dense", (3, 6))
    (tmp_path / "dense" / FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=FILE):
        IdVocab.read(tmp_path / "dense", (3, 5))
    assert IdVocab.of(type("Pre", (), {"user_ids": None, "item_ids": None})()) is None


def test_cli_trains_on_a_log_and_keeps_its_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "log.tsv"
    n = 3000
    pl.DataFrame({"u": [f"user-{u}" for u in rng.integers(0, 100, n)],
                  "i": [f"sku-{i}" for i in rng.zipf(1.5, n) % 300],
                  "t": rng.integers(0, 10**9, n)}).write_csv(path, separator="\t")
    args = ["--data", str(path), "--user-col", "u", "--item-col", "i", "--time-col", "t", "--model", "mf",
            "--epochs", "2", "--dim", "8"]
    out = CliRunner().invoke(app, ["train", "cf", *args, "--out", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    assert "Recall@20" in out.output
    served = load_recommender(tmp_path / "m")
    assert served.ids.users[0] == "user-0" and all(i.startswith("sku-") for i in served.ids.items)
    out = CliRunner().invoke(app, ["train", "cf", "--data", str(path), "--item-col", "i", "--out",
                                   str(tmp_path / "bad")])  # no user column called "user"
    assert out.exit_code != 0 and "'user'" in " ".join(out.output.split())
    assert not (tmp_path / "bad").exists()


def test_random_holdout_does_not_favour_repeated_items(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    pl.DataFrame({"user": ["a"] * 10, "item": ["A"] * 9 + ["B"]}).write_csv(path)
    config = InteractionsConfig(test_fraction=0.5)
    in_test = [load_interactions_table(path, config, seed=s).test[0, 0] for s in range(200)]
    assert 0.4 < np.mean(in_test) < 0.6  # A is held out half the time, however often it repeats


def test_times_compare_exactly_and_bad_times_are_errors(tmp_path: Path) -> None:
    base = datetime(2024, 1, 1)
    late_first = {"user": ["a", "a", "a", "a"], "item": ["b", "c", "d", "e"]}
    cases = [
        [base + timedelta(microseconds=1), base, base - timedelta(days=2), base - timedelta(days=1)],
        [1_700_000_000_000_000_001, 1_700_000_000_000_000_000, 1, 2],
        ["2024-01-01T00:00:00.000001", "2024-01-01T00:00:00", "2023-12-30", "2023-12-31"],
    ]
    for times in cases:
        path = tmp_path / "t.parquet"
        pl.DataFrame({**late_first, "t": times}).write_parquet(path)
        data = load_interactions_table(path, InteractionsConfig(time="t", test_fraction=0.25))
        assert _dense(data)["test"] == {"a:b"}, times
    for times, match in (([float("nan"), 5.0, 3.0, 4.0], "row 1: missing time"),
                         ([timedelta(1)] * 4, "numbers or date-times")):
        pl.DataFrame({**late_first, "t": times}).write_parquet(tmp_path / "bad.parquet")
        with pytest.raises(InputError, match=match):
            load_interactions_table(tmp_path / "bad.parquet", InteractionsConfig(time="t"))


def test_an_ids_file_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    LOG.write_csv(path)
    data = load_interactions_table(path, TEMPORAL)
    model, _ = train_cf(CFTrainConfig(model="mf", dim=4, epochs=1, batch_size=8, progress=False), data)
    save_model(model, tmp_path / "plain")  # no ids
    assert load_recommender(tmp_path / "plain").ids is None
    (tmp_path / "plain" / FILE).write_text('{"users": ["x", "y", "z"], "items": ["1", "2", "3", "4", "5"]}')
    with pytest.raises(ArtifactError, match="not listed in the manifest"):
        load_recommender(tmp_path / "plain")
    assert IdVocab.of(data).user_row("  bob ") == 1  # request ids are stripped like the log's


def test_cli_evaluates_a_small_catalogue_at_its_size_and_refuses_to_clobber(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    pl.DataFrame({"user": [f"u{i % 5}" for i in range(40)], "item": [f"i{i % 8}" for i in range(40)]}
                 ).write_csv(path)
    args = ["train", "cf", "--data", str(path), "--model", "mf", "--epochs", "1", "--dim", "4",
            "--out", str(tmp_path / "m")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and "Recall@8" in out.output, out.output
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and "already exists" in " ".join(out.output.split())  # rich wraps lines


def test_cli_says_when_no_user_has_a_test_item(tmp_path: Path) -> None:
    # two items per user at --test-fraction 0.2: every item stays in train; "Recall 0.0000" hid that
    path = tmp_path / "two.csv"
    pl.DataFrame({"user": [f"u{i // 2}" for i in range(40)], "item": [f"i{i % 7}" for i in range(40)]}
                 ).write_csv(path)
    out = CliRunner().invoke(app, ["train", "cf", "--data", str(path), "--model", "mf", "--epochs", "1",
                                   "--dim", "4", "--out", str(tmp_path / "m")])
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "no user has a test item" in text and "Recall" not in text, out.output


def test_a_lightgcn_list_passed_as_a_table_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("0 " + " ".join(str(i) for i in range(60)) + "\n1 2 3\n")
    cut = r"\['0 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 \.\.\.'\]\)"  # the 40-character cut of the one "column"
    with pytest.raises(InputError, match=cut + "; the file reads as one column of space-separated values"):
        load_interactions_table(path, InteractionsConfig())
