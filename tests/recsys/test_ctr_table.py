"""CTR rows from a user's own table (recsys.data.ctr_table): train-split vocabularies with OOV ids,
quantile bins for numeric columns, CSV = Parquet, clear errors, and training / AFM / the sweep on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from embeddings.sweep import SweepConfig, run_sweep
from recsys.data.ctr import CTRField, CTRSchema, encode_column, load_ctr
from recsys.data.ctr_table import TableCTRConfig, load_table_ctr
from recsys.data.libfm import split_rows
from recsys.data.table_file import read_table
from recsys.training.ctr import CTRTrainConfig, build_ctr_model, load_ctr_model, save_ctr_model, train_ctr
from services.cli import app
from sparsekit.errors import InputError

CONFIG = TableCTRConfig(label="click", numeric=("price",), min_count=2)


def _frame(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    """A planted CTR table: the click depends on the user, the item and the price."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 40, n)
    item = rng.zipf(1.4, n) % 300
    price = rng.lognormal(1.0, 1.0, n)
    logit = 1.5 * np.sin(user) + np.cos(item) + 0.8 * np.log(price) - 0.8
    click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    price_text = [("" if rng.random() < 0.05 else f"{p:.3f}") for p in price]
    return pl.DataFrame({"click": click, "user": [f"u{u:03d}" for u in user], "item": item.astype(str),
                         "price": price_text})


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ctr") / "clicks.csv"
    _frame().write_csv(path)
    return path


def test_vocabularies_come_from_the_train_split_only(table: Path) -> None:
    data = load_table_ctr(table, CONFIG)
    frame = pl.read_csv(table, infer_schema=False)
    train = split_rows(frame.height, seed=0)[0]
    counts = frame[train]["item"].value_counts()
    kept = set(counts.filter(pl.col("count") >= 2)["item"])
    item = data.schema.fields[1]
    assert item.oov and set(item.values) == kept and item.cardinality == len(kept) + 1
    assert data.field_names == ["user", "item", "price"]
    assert (len(data.train), len(data.val), len(data.test)) == (2100, 300, 600)
    # a test value the train split never saw, or saw once, gets the OOV id
    test_items = frame[split_rows(frame.height, seed=0)[2]]["item"].to_list()
    local = data.test.features[:, 1] - data.schema.offsets[1]
    for value, got in zip(test_items, local, strict=True):
        assert got == (item.values.index(value) if value in kept else item.cardinality - 1)


def test_numeric_columns_are_cut_at_train_quantiles_with_a_missing_bucket(table: Path) -> None:
    data = load_table_ctr(table, CONFIG)
    price = data.schema.fields[2]
    assert price.bins is not None and price.oov and len(price.bins) <= 15
    assert list(price.bins) == sorted(price.bins)
    splits = (data.train, data.val, data.test)
    local = np.concatenate([s.features[:, 2] for s in splits]) - data.schema.offsets[2]
    assert local.min() == 0 and local.max() == price.cardinality - 1  # the missing bucket is used
    counts = np.bincount(data.train.features[:, 2] - data.schema.offsets[2])[:-1]
    assert counts.min() > 0.5 * counts.mean()  # quantile buckets hold similar shares of train rows


def test_csv_and_parquet_give_the_same_dataset_and_a_schema_reencodes_identically(
    table: Path, tmp_path: Path
) -> None:
    parquet = tmp_path / "clicks.parquet"
    pl.read_csv(table, infer_schema=False).write_parquet(parquet)
    a, b = load_table_ctr(table, CONFIG), load_ctr(str(parquet), table=CONFIG)
    assert a.schema == b.schema
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split).features, getattr(b, split).features)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
    again = load_table_ctr(parquet, CONFIG, schema=CTRSchema.from_dict(a.schema.to_dict()))
    np.testing.assert_array_equal(again.test.features, a.test.features)


def test_oov_fields_map_unknown_and_missing_values_to_their_last_id() -> None:
    field = CTRField("city", 3, values=("paris", "rome"), oov=True)
    schema = CTRSchema((field, CTRField("age", 4, bins=(18.0, 30.0), oov=True)))
    rows = [{"city": "rome", "age": 25}, {"city": "oslo", "age": None}, {"city": "", "age": "nan"}]
    np.testing.assert_array_equal(schema.encode(rows), [[1, 4], [2, 6], [2, 6]])
    column = pl.Series("city", ["rome", "oslo", None, " paris "])
    np.testing.assert_array_equal(encode_column(field, column), [1, 2, 2, 0])
    with pytest.raises(InputError, match="age"):
        schema.encode([{"city": "rome", "age": "old"}])  # malformed, not missing: still an error
    with pytest.raises(InputError, match="city"):
        CTRField("city", 2, values=("paris", "rome"), oov=True)  # the OOV id needs its own slot


@pytest.mark.parametrize(
    ("frame", "config", "match"),
    [
        (pl.DataFrame({"y": [0, 1], "a": ["x", "y"]}), TableCTRConfig(), "label column 'label'"),
        (pl.DataFrame({"label": [0, 2], "a": ["x", "y"]}), TableCTRConfig(),
         r"t\.csv: column 'label': row 2: label '2'"),
        (pl.DataFrame({"label": [0, 1], "a": ["x", "y"]}), TableCTRConfig(numeric=("b",)),
         r"numeric.*\['b'\]"),
        (pl.DataFrame({"label": [0, 1]}), TableCTRConfig(), "no feature columns"),
        (pl.DataFrame({"label": [], "a": []}, schema={"label": pl.Int64, "a": pl.String}), TableCTRConfig(),
         "no rows"),
        (pl.DataFrame({"label": [0, 1, 1], "a": ["x", "y", "z"], "n": ["1", "2", "lots"]}),
         TableCTRConfig(numeric=("n",)), r"t\.csv: column 'n': row 3: 'lots' is not a number"),
    ],
)
def test_bad_tables_get_errors_that_name_the_problem(
    tmp_path: Path, frame: pl.DataFrame, config: TableCTRConfig, match: str
) -> None:
    path = tmp_path / "t.csv"
    frame.write_csv(path)
    with pytest.raises(InputError, match=match):
        load_table_ctr(path, config)


@pytest.mark.parametrize(("name", "content", "match"), [
    ("short.csv", b"label,a,b\n1,x,2\n0,y\n1,z,3\n", r"short\.csv:3: 2 fields where the first line has 3"),
    ("long.csv", b"label,a,b\n1,x,2\n0,y,1\n1,z,3,4\n", r"long\.csv:4: 4 fields where the first line has 3"),
    ("long.tsv", b"label\ta\tb\n1\tx\t2\n0\ty\t1\t9\n", r"long\.tsv:3: 4 fields"),
    ("latin1.csv", b"label,a,b\n1,x,2\n0,caf\xe9,1\n", r"latin1\.csv:3: not valid UTF-8"),
    ("replacement.csv", "label,a,b\n1,x\ufffd,2\n".encode() + b"0,caf\xe9,1\n",  # a real U+FFFD first
     r"replacement\.csv:3: not valid UTF-8"),
])
def test_ragged_and_undecodable_lines_are_named(tmp_path: Path, name: str, content: bytes,
                                                match: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_table_ctr(tmp_path / name)


def test_quoted_separators_and_multiline_cells_are_not_ragged(tmp_path: Path) -> None:
    path = tmp_path / "commas.csv"  # no multi-line cell: checked line by line, quotes respected
    path.write_text('label,a,b\n1,"x, y",2\n0,"p ""q"", r",1\n   \n')
    assert read_table(path)["a"].to_list()[:2] == ["x, y", 'p "q", r']
    path = tmp_path / "unit.csv"  # a cell holding the check's own one-cell separator is still read
    path.write_text("a,b\n1,x\x1fy\n2,z\n")
    assert read_table(path)["b"].to_list() == ["x\x1fy", "z"]
    path = tmp_path / "quoted.csv"
    path.write_text('label,a,b\n1,"x, with a comma",2\n0,"two\nlines",1\n')
    assert read_table(path)["a"].to_list() == ["x, with a comma", "two\nlines"]


def test_unknown_sources_and_formats_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither a dataset"):
        load_ctr(str(tmp_path / "rows.json"))
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown table format"):
        load_table_ctr(tmp_path / "rows.xlsx")
    with pytest.raises(InputError, match="no such file"):
        load_table_ctr(tmp_path / "missing.csv")


def test_a_model_trains_on_the_table_and_scores_unseen_values(table: Path) -> None:
    data = load_table_ctr(table, CONFIG)
    result = train_ctr(CTRTrainConfig(model="deepfm", max_epochs=8, progress=False), data)
    assert result.metrics["test_auc"] > 0.7
    ids = data.schema.encode([{"user": "nobody", "item": "never-seen", "price": ""}])
    assert (ids[0] == data.schema.offsets + np.asarray(data.field_dims) - 1).all()


def test_cli_trains_and_compresses_a_table_model(table: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--label", "click", "--numeric", "price", "--min-count", "2"]
    out = runner.invoke(app, ["train", "ctr", "--data", str(table), "--out", str(tmp_path / "m"),
                              "--max-epochs", "3", *args])
    assert out.exit_code == 0, out.output
    art = load_ctr_model(tmp_path / "m")
    assert art.schema == load_table_ctr(table, CONFIG).schema
    out = runner.invoke(app, ["compress", "ctr", "--model", str(tmp_path / "m"), "--calib", str(table),
                              "--rank", "4", "--out", str(tmp_path / "small")])  # --label from the model
    assert out.exit_code == 0, out.output
    small = load_ctr_model(tmp_path / "small")
    assert small.schema == art.schema
    assert small.params["config"] == art.params["config"] and small.params["data_table"]["label"] == "click"
    out = runner.invoke(app, ["train", "ctr", "--data", str(table), "--out", str(tmp_path / "bad")])
    assert out.exit_code != 0 and "label column 'label'" in " ".join(out.output.split())  # rich wraps
    assert not (tmp_path / "bad").exists()


def test_compress_warns_when_calibrated_on_other_data(table: Path, tmp_path: Path) -> None:
    # the model recorded no training data, so AUCs on another table's split were printed as the model's
    runner = CliRunner()
    out = runner.invoke(app, ["train", "ctr", "--data", str(table), "--out", str(tmp_path / "m"),
                              "--max-epochs", "1", "--label", "click", "--numeric", "price"])
    assert out.exit_code == 0, out.output
    trained_on = load_ctr_model(tmp_path / "m").params["data"]
    assert trained_on["table"] == "clicks.csv" and len(trained_on["sha256"]) == 64
    same = tmp_path / "copy.csv"  # the same bytes under another path: the same data
    same.write_bytes(table.read_bytes())
    other = tmp_path / "other.csv"
    _frame(seed=1).write_csv(other)
    base = ["compress", "ctr", "--model", str(tmp_path / "m"), "--rank", "2"]
    out = runner.invoke(app, [*base, "--calib", str(same), "--out", str(tmp_path / "a")])
    assert out.exit_code == 0 and "warning" not in out.output, out.output
    out = runner.invoke(app, [*base, "--calib", str(other), "--out", str(tmp_path / "b")])
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "warning:" in text and "not the data" in text and "clicks.csv" in text
    assert load_ctr_model(tmp_path / "b").params["data"] == trained_on  # the training data, not --calib


def test_a_table_gone_after_training_does_not_lose_the_model(table: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the table was hashed for the model's record only after training: a rotated log cost the model
    import recsys.training.ctr as ctr_training

    own = tmp_path / "rotated.csv"
    own.write_bytes(table.read_bytes())
    real = ctr_training.train_ctr

    def train_then_rotate(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        own.unlink()
        return result

    monkeypatch.setattr(ctr_training, "train_ctr", train_then_rotate)
    out = CliRunner().invoke(app, ["train", "ctr", "--data", str(own), "--out", str(tmp_path / "m"),
                                   "--max-epochs", "1", "--label", "click", "--numeric", "price"])
    assert out.exit_code == 0, out.output
    assert load_ctr_model(tmp_path / "m").params["data"]["table"] == "rotated.csv"


def test_cli_checkpoints_and_resumes_a_ctr_run(table: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "ctr", "--data", str(table), "--label", "click", "--numeric", "price",
            "--max-epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt")]
    out = runner.invoke(app, [*base, "--out", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "ckpt" / "checkpoint" / "state.pt").is_file()
    out = runner.invoke(app, [*base, "--resume", "--out", str(tmp_path / "again")])  # finished: same model
    assert out.exit_code == 0, out.output
    first, again = load_ctr_model(tmp_path / "m").model, load_ctr_model(tmp_path / "again").model
    for name, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)
    out = runner.invoke(app, [*base, "--lr", "0.1", "--resume", "--out", str(tmp_path / "other")])
    assert out.exit_code != 0 and "different config" in " ".join(out.output.split())
    assert not (tmp_path / "other").exists()
    out = runner.invoke(app, [*base[:-1], str(tmp_path / "m2" / "ckpt"), "--out", str(tmp_path / "m2")])
    assert out.exit_code != 0 and "--checkpoint-dir" in out.output  # inside --out: refused before training


def test_compress_splits_with_the_training_seed(table: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # compress ctr used seed 0 whatever the model was trained with: calibration on val/test rows and
    # "val/test AUC" over a split holding training rows
    data = load_table_ctr(table, CONFIG, seed=3)
    config = CTRTrainConfig(model="deepfm", embed_dim=4, hidden=(8,), seed=3)
    model = build_ctr_model(config, data.field_dims)
    save_ctr_model(model, tmp_path / "m", schema=data.schema, config=config)
    seeds: list[int] = []

    def recording(*args: object, **kwargs: object) -> object:
        seeds.append(args[2])
        return load_ctr(*args, **kwargs)

    monkeypatch.setattr("recsys.data.ctr.load_ctr", recording)
    base = ["compress", "ctr", "--model", str(tmp_path / "m"), "--calib", str(table), "--label", "click",
            "--rank", "2"]
    out = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "small")])
    assert out.exit_code == 0, out.output
    assert seeds == [3]
    out = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "other"), "--seed", "0"])
    assert out.exit_code == 2 and "--seed: 0 is not the seed" in " ".join(out.output.split())
    assert not (tmp_path / "other").exists()


def test_the_compression_sweep_runs_on_a_table(table: Path, tmp_path: Path) -> None:
    config = SweepConfig(dataset=str(table), table=CONFIG, methods=("hashing",), budgets=(0.1,), seeds=(0,),
                         out_dir=str(tmp_path / "sweep"), max_epochs=2, progress=False)
    runs = run_sweep(config)
    assert set(runs["method"]) == {"full", "hashing"} and (runs["status"] == "ok").all()
    assert (runs["stored_bytes"] <= 1.02 * runs["budget_bytes"]).all()


def test_cli_sweep_charges_the_first_order_table_when_asked(table: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["bench", "embeddings", "--dataset", str(table), "--label", "click", "--model", "deepfm",
            "--methods", "hashing", "--budgets", "0.5", "--seeds", "0", "--max-epochs", "1"]
    out = runner.invoke(app, [*args, "--first-order", "counted", "--out", str(tmp_path / "s")])
    assert out.exit_code == 0, out.output
    run = json.loads((tmp_path / "s" / "runs" / "deepfm__hashing__0.5__s0.json").read_text())
    assert run["first_order_bytes"] > 0 and run["stored_bytes"] <= 1.02 * run["budget_bytes"]
    out = runner.invoke(app, [*args, "--first-order", "sometimes", "--out", str(tmp_path / "bad")])
    assert out.exit_code != 0 and "--first-order" in out.output  # the option, not the field
    out = runner.invoke(app, [*args, "--lr", "3e-3", "--embedding-l2", "0", "--out", str(tmp_path / "t")])
    assert out.exit_code == 0, out.output
    stored = json.loads((tmp_path / "t" / "sweep.json").read_text())
    assert (stored["lr"], stored["embedding_l2"]) == (3e-3, 0.0)
    out = runner.invoke(app, [*args, "--lr", "0", "--out", str(tmp_path / "bad")])
    assert out.exit_code != 0 and "--lr" in out.output


def test_per_row_and_column_encoding_agree_on_typed_columns(tmp_path: Path) -> None:
    frame = pl.DataFrame({
        "label": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        "shop": [7.0, 7.0, 2.5, None, float("nan"), float("inf"), 7.0, 2.5, 3.0, 3.0],
        "flag": [True, False, True, None, True, False, True, False, True, False],
        "n": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    })
    path = tmp_path / "typed.parquet"
    frame.write_parquet(path)
    data = load_table_ctr(path, TableCTRConfig(), fractions=(0.6, 0.2, 0.2))
    shop, flag, _ = data.schema.fields
    assert "NaN" not in shop.values and "inf" not in shop.values and set(shop.values) <= {"7", "2.5", "3"}
    assert set(flag.values) <= {"true", "false"}
    for spec, offset in zip(data.schema.fields, data.schema.offsets, strict=True):
        column = encode_column(spec, frame[spec.name], int(offset))
        rows = [int(offset) + spec.local_id(v, i + 1) for i, v in enumerate(frame[spec.name].to_list())]
        assert column.tolist() == rows, spec.name
    # what a ScoreCTR client sends as text lands on the same ids
    assert data.schema.encode([{"shop": "7", "flag": "true", "n": "3"}]).tolist() == \
        data.schema.encode([{"shop": 7.0, "flag": True, "n": 3}]).tolist()


def test_omitted_fields_of_an_oov_schema_are_missing_values() -> None:
    schema = CTRSchema((CTRField("city", 2, values=("rome",), oov=True), CTRField("age", 3, bins=(18.0,),
                                                                                   oov=True)))
    np.testing.assert_array_equal(schema.encode([{"city": "rome"}]), [[0, 4]])
    closed = CTRSchema((CTRField("city", 1, values=("rome",)),))
    with pytest.raises(InputError, match=r"city.*missing value"):
        closed.encode([{}])


def test_file_quirks_headerless_tsv_quotes_spaces_and_infinities(tmp_path: Path) -> None:
    (tmp_path / "nh.csv").write_text("".join(f"{i % 2},u{i % 5},{i}.5\n" for i in range(40)))
    data = load_table_ctr(tmp_path / "nh.csv", TableCTRConfig(label="column_1", numeric=("column_3",),
                                                              header=False))
    assert data.field_names == ["column_2", "column_3"]
    quoted = "".join(f"{i % 2}\t{i % 3} 5\" screen\n" for i in range(40))
    (tmp_path / "q.tsv").write_text("label\tname\n" + quoted)
    assert load_table_ctr(tmp_path / "q.tsv").schema.fields[0].values[0].endswith('5" screen')
    lines = "".join(f"{i % 2}, {('inf' if i % 5 == 0 else i)}\n" for i in range(60))
    (tmp_path / "sp.csv").write_text("label, price\n" + lines)
    data = load_table_ctr(tmp_path / "sp.csv", TableCTRConfig(numeric=("price",)))
    price = data.schema.fields[0]
    assert price.name == "price" and all(np.isfinite(price.bins))
    assert CTRSchema.from_dict(data.schema.to_dict()) == data.schema


def test_duplicate_names_nested_columns_and_one_label_splits_are_errors(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("label,a,a\n0,x,y\n1,y,z\n")
    with pytest.raises(InputError, match="duplicate column"):
        load_table_ctr(tmp_path / "dup.csv")
    pl.DataFrame({"label": [0, 1], "tags": [["a"], ["b", "c"]]}).write_parquet(tmp_path / "nested.parquet")
    with pytest.raises(InputError, match=r"\['tags'\] hold lists"):
        load_table_ctr(tmp_path / "nested.parquet")
    pl.DataFrame({"label": [1] * 9 + [0], "a": list("abcdefghij")}).write_csv(tmp_path / "skew.csv")
    with pytest.raises(InputError, match="one label only"):
        load_table_ctr(tmp_path / "skew.csv")


def test_a_sweep_folder_refuses_runs_of_another_setup(table: Path, tmp_path: Path) -> None:
    config = SweepConfig(dataset=str(table), table=CONFIG, methods=("hashing",), budgets=(0.1,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    run_sweep(config)
    other = TableCTRConfig(label="click", numeric=("price",), min_count=50)
    with pytest.raises(InputError, match=r"different sweep.*'field_dims'.*'table'"):
        run_sweep(SweepConfig(**{**config.__dict__, "table": other}))
