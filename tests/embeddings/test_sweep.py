"""The embedding budget sweep: infeasible cells, resumption, the recommendation rule and the report files."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from embeddings import sweep
from embeddings.sweep import RunKey, SweepConfig, recommend, run_keys, run_sweep, summarize, write_report
from recsys.data.synthetic_ctr import SyntheticCTRConfig, make_synthetic_ctr
from sparsekit.errors import InputError


@pytest.fixture()
def tiny(monkeypatch: pytest.MonkeyPatch):
    data = make_synthetic_ctr(SyntheticCTRConfig(field_dims=(50, 20, 8), num_rows=3000, seed=1))
    def fake_load(config, seed=0):
        return data

    monkeypatch.setattr(sweep, "load_dataset", fake_load)
    return data


def test_sweep_runs_resumes_and_reports(tiny, tmp_path) -> None:
    config = SweepConfig(models=("wdl",), methods=("hashing", "int8"), budgets=(0.5, 0.01), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    runs = run_sweep(config)
    assert runs.height == len(run_keys(config)) == 5  # full + 2 methods x 2 budgets
    status = {(r["method"], r["budget"]): r["status"] for r in runs.iter_rows(named=True)}
    assert status[("int8", 0.01)] == "infeasible"  # row scales alone exceed 1% of the table
    ok = runs.filter(pl.col("status") == "ok")
    assert (ok["stored_bytes"] <= 1.02 * ok["budget_bytes"]).all()
    marker = tmp_path / "runs" / "wdl__hashing__0.5__s0.json"
    row = json.loads(marker.read_text())
    row["test_auc"] = -1.0  # a finished run is read back, not retrained
    marker.write_text(json.dumps(row))
    assert row["commit"]  # which code trained it
    again = run_sweep(config)
    assert again.filter((pl.col("method") == "hashing") & (pl.col("budget") == 0.5))["test_auc"][0] == -1.0
    paths = write_report(runs, tmp_path / "report")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


def test_recommendation_uses_validation_auc_not_test() -> None:
    summary = pl.DataFrame({
        "model": ["m"] * 3, "method": ["full", "a", "b"], "budget": [1.0, 0.1, 0.1],
        "val_auc": [0.90, 0.85, 0.80], "test_auc": [0.91, 0.70, 0.95], "n_ok": [1, 1, 1], "n_runs": [1, 1, 1],
        "stored_bytes": [100.0, 10.0, 10.0], "budget_bytes": [100, 10, 10],
    })
    best = recommend(summary).row(0, named=True)
    assert best["method"] == "a" and best["gap_to_full"] == pytest.approx(0.21)


def test_a_method_that_failed_in_some_seeds_is_not_recommended() -> None:
    """Its mean covers only the seeds that trained: "c" (1 of 3 ok, a lucky 0.95) must not win."""
    summary = pl.DataFrame({
        "model": ["m"] * 3, "method": ["full", "a", "c"], "budget": [1.0, 0.1, 0.1],
        "val_auc": [0.90, 0.85, 0.95], "test_auc": [0.91, 0.80, 0.90], "n_ok": [3, 3, 1], "n_runs": [3, 3, 3],
        "stored_bytes": [100.0, 10.0, 10.0], "budget_bytes": [100, 10, 10],
    })
    assert recommend(summary)["method"].to_list() == ["a"]


def test_excluded_methods_and_compositions_do_not_compete() -> None:
    summary = pl.DataFrame({
        "model": ["m"] * 4, "method": ["full", "a", "lsq", "qr+int4"], "budget": [1.0, 0.1, 0.1, 0.1],
        "val_auc": [0.90, 0.80, 0.85, 0.88], "test_auc": [0.91, 0.80, 0.90, 0.90], "n_ok": [3] * 4,
        "n_runs": [3] * 4, "stored_bytes": [100.0, 10.0, 10.0, 10.0], "budget_bytes": [100, 10, 10, 10],
    })
    assert recommend(summary)["method"].to_list() == ["lsq"]
    assert recommend(summary, exclude=("lsq",))["method"].to_list() == ["a"]
    assert recommend(summary, composed=True)["method"].to_list() == ["qr+int4"]
    assert recommend(summary, composed=True, exclude=("qr+int4",))["method"].to_list() == ["lsq"]


def test_the_markdown_report_keeps_small_budgets_and_gaps_apart() -> None:
    from embeddings.sweep import _markdown

    table = _markdown(pl.DataFrame({"budget": [1e-4, 5e-5, 1e-5], "gap_to_full": [4e-5, -3e-5, 0.0123]}))
    assert "| 0.0001 | 4e-05 |" in table and "| 5e-05 | -3e-05 |" in table and "| 1e-05 | 0.0123 |" in table


def test_summary_keeps_infeasible_cells() -> None:
    runs = pl.DataFrame({
        "model": ["m", "m"], "method": ["a", "a"], "budget": [0.1, 0.1], "seed": [0, 1],
        "status": ["ok", "ok"], "val_auc": [0.8, 0.9], "test_auc": [0.7, 0.8], "test_logloss": [0.5, 0.4],
        "stored_bytes": [10, 10], "budget_bytes": [10, 10], "train_samples_per_s": [1.0, 1.0],
        "inference_samples_per_s": [1.0, 1.0],
    })
    row = summarize(runs).row(0, named=True)
    assert row["val_auc"] == pytest.approx(0.85) and row["n_ok"] == 2


def test_repeated_values_are_one_run_each(tiny, tmp_path) -> None:
    """A repeat in --methods / --budgets / --seeds is not trained or counted twice (n_runs, std)."""
    config = SweepConfig(models=("wdl", "wdl"), methods=("hashing", "hashing"), budgets=(0.5, 0.50),
                         seeds=(0, 0), out_dir=str(tmp_path), max_epochs=1,
                         progress=False)
    assert (config.models, config.methods, config.budgets, config.seeds) == (("wdl",), ("hashing",), (0.5,),
                                                                             (0,))
    assert set(summarize(run_sweep(config))["n_runs"]) == {1}
    with pytest.raises(InputError, match="same run file name") as info:
        SweepConfig(budgets=(0.1, 0.1000001))  # both would be written to ...__0.1__s0.json
    assert info.value.source == "budgets"


def test_config_names_unknown_methods_and_budgets() -> None:
    with pytest.raises(InputError, match="methods"):
        SweepConfig(methods=("nope",))
    with pytest.raises(InputError, match="budgets"):
        SweepConfig(budgets=(0.0,))
    with pytest.raises(InputError, match=r"seeds: every value must be an integer >= 0, got \[-1\]"):
        SweepConfig(seeds=(-1,))  # refused up front, not by numpy's seeding after the data loads
    with pytest.raises(InputError, match="unknown CTR model") as info:
        SweepConfig(models=("dcnv2", "nope"))  # not after loading the data and writing sweep.json
    assert info.value.source == "models"


def test_resume_refuses_other_min_epochs_and_reads_old_folders_as_1(tiny, tmp_path) -> None:
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=2, progress=False)
    run_sweep(config)
    identity = tmp_path / "sweep.json"
    stored = json.loads(identity.read_text())
    assert stored["min_epochs"] == 1
    del stored["min_epochs"]  # a folder written before the setting existed trained with 1
    identity.write_text(json.dumps(stored))
    run_sweep(config)
    with pytest.raises(InputError, match="min_epochs"):
        run_sweep(SweepConfig(**{**config.__dict__, "min_epochs": 2}))


def test_counted_first_order_table_comes_out_of_the_budget(tiny, tmp_path) -> None:
    config = SweepConfig(models=("deepfm", "dcnv2"), methods=("hashing",), budgets=(0.5, 0.05), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False, first_order="counted")
    runs = {(r["model"], r["method"], r["budget"]): r for r in run_sweep(config).iter_rows(named=True)}
    n, dim = tiny.num_features, config.embed_dim
    # float32 dim-16 table; dim-1 first-order table with its field offsets (8 bytes a field), all charged
    full, first = 4 * n * dim, 4 * n + 8 * len(tiny.field_dims)
    deepfm = runs[("deepfm", "hashing", 0.5)]
    assert deepfm["budget_bytes"] == int(0.5 * (full + first))
    assert deepfm["first_order_bytes"] == first
    assert deepfm["stored_bytes"] <= 1.02 * deepfm["budget_bytes"]
    assert deepfm["stored_bytes"] - deepfm["first_order_bytes"] <= 1.02 * (0.5 * (full + first) - first)
    # 5% of both tables is less than the first-order table's 1/17 share: nothing left for the embeddings
    assert runs[("deepfm", "hashing", 0.05)]["status"] == "infeasible"
    assert "first-order" in runs[("deepfm", "hashing", 0.05)]["reason"]
    # models without a first-order table are unaffected, and the baseline stays the whole model
    assert runs[("dcnv2", "hashing", 0.05)]["status"] == "ok"
    assert runs[("dcnv2", "hashing", 0.05)]["first_order_bytes"] == 0
    assert runs[("deepfm", "full", 1.0)]["budget_bytes"] == full + first


def test_projected_first_order_charges_only_the_projection(tiny, tmp_path) -> None:
    config = SweepConfig(models=("deepfm", "dcnv2"), methods=("hashing",), budgets=(0.1,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False, first_order="projected")
    runs = {(r["model"], r["method"], r["budget"]): r for r in run_sweep(config).iter_rows(named=True)}
    n, dim, fields = tiny.num_features, config.embed_dim, len(tiny.field_dims)
    full, first, projection = 4 * n * dim, 4 * n + 8 * fields, 4 * fields * dim
    deepfm = runs[("deepfm", "hashing", 0.1)]
    assert deepfm["budget_bytes"] == int(0.1 * (full + first))  # the same budget as "counted"
    assert deepfm["first_order_bytes"] == projection  # no first-order table: the per-field projection
    assert deepfm["stored_bytes"] <= deepfm["budget_bytes"]
    assert deepfm["stored_bytes"] - projection > 1.02 * (0.1 * (full + first) - first)  # more than counted
    # the reference keeps its first-order table; a model without one is unaffected
    assert runs[("deepfm", "full", 1.0)]["first_order_bytes"] == first
    assert runs[("dcnv2", "hashing", 0.1)]["first_order_bytes"] == 0
    assert sweep.train_config(RunKey("deepfm", "hashing", 0.1, 0), config).wide == "projected"
    assert sweep.train_config(RunKey("deepfm", "full", 1.0, 0), config).wide == "table"
    assert sweep.train_config(RunKey("dcnv2", "hashing", 0.1, 0), config).wide == "table"


def test_first_order_setting_is_checked_and_part_of_the_folder_identity(tiny, tmp_path) -> None:
    with pytest.raises(InputError, match="first_order"):
        SweepConfig(first_order="sometimes")
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    run_sweep(config)
    identity = tmp_path / "sweep.json"
    stored = json.loads(identity.read_text())
    assert stored["first_order"] == "free"
    del stored["first_order"]  # a folder written before the setting existed kept it outside the budget
    identity.write_text(json.dumps(stored))
    run_sweep(config)
    with pytest.raises(InputError, match="first_order"):
        run_sweep(SweepConfig(**{**config.__dict__, "first_order": "counted"}))


def test_a_run_does_not_depend_on_what_ran_before_it(tiny, tmp_path) -> None:
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path / "a"), max_epochs=1, progress=False)
    key = run_keys(config)[1]
    first = sweep.run_one(key, tiny, config)
    torch.randn(1000)  # another run (or anything else) drew from the global generator in between
    again = sweep.run_one(key, tiny, config)
    assert first["val_auc"] == again["val_auc"] and first["test_auc"] == again["test_auc"]


def test_seeds_reach_hash_functions_and_old_seeding_is_not_resumed(tiny, tmp_path) -> None:
    assert sweep.seed_options("hashing", 2) == {"seed": 2}
    assert sweep.seed_options("hashing+int4", 2) == {"table_options": {"seed": 2}}
    assert sweep.seed_options("qr", 2) == {}
    assert sweep.table_seed(0) != 0 and sweep.table_seed(0) != sweep.table_seed(1)
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    run_sweep(config)
    identity = tmp_path / "sweep.json"
    stored = json.loads(identity.read_text())
    del stored["seeding"]  # a folder whose runs drew their tables before the run's seed was set
    identity.write_text(json.dumps(stored))
    with pytest.raises(InputError, match="seeding"):
        run_sweep(config)


def test_training_settings_reach_the_runs_and_are_part_of_the_folder_identity(tiny, tmp_path) -> None:
    from recsys.training.ctr import CTRTrainConfig

    defaults = CTRTrainConfig()
    assert (SweepConfig().lr, SweepConfig().embedding_l2) == (defaults.lr, defaults.embedding_l2)
    with pytest.raises(InputError, match="lr"):
        SweepConfig(lr=0.0)
    with pytest.raises(InputError, match="embedding_l2"):
        SweepConfig(embedding_l2=-1.0)
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path / "a"), max_epochs=1, progress=False)
    slow = SweepConfig(**{**config.__dict__, "lr": 1e-4, "out_dir": str(tmp_path / "b")})
    assert sweep.train_config(RunKey("wdl", "hashing", 0.1, 0), slow).lr == 1e-4
    key = RunKey("wdl", "hashing", 0.1, 0)
    assert sweep.train_config(key, SweepConfig(embedding_l2=0.0)).embedding_l2 == 0.0
    key = run_keys(config)[1]
    assert sweep.run_one(key, tiny, config)["val_auc"] != sweep.run_one(key, tiny, slow)["val_auc"]
    run_sweep(config)
    identity = tmp_path / "a" / "sweep.json"
    stored = json.loads(identity.read_text())
    assert (stored["lr"], stored["embedding_l2"]) == (1e-2, 1e-2)
    del stored["lr"], stored["embedding_l2"]  # a folder written before the settings existed: defaults
    identity.write_text(json.dumps(stored))
    run_sweep(config)
    with pytest.raises(InputError, match="lr"):
        run_sweep(SweepConfig(**{**config.__dict__, "lr": 3e-2}))


def test_a_folder_with_no_finished_run_takes_new_settings(tiny, tmp_path) -> None:
    """A sweep that failed before its first run left only sweep.json: the corrected rerun may proceed."""
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    sweep._check_identity(tmp_path, {"min_epochs": 5})
    sweep._check_identity(tmp_path, {"min_epochs": 1})  # nothing finished under the first settings
    assert json.loads((tmp_path / "sweep.json").read_text()) == {"min_epochs": 1}
    run_sweep(config)
    with pytest.raises(InputError, match="min_epochs"):
        run_sweep(SweepConfig(**{**config.__dict__, "min_epochs": 2}))
    with pytest.raises(InputError, match="seeds"):
        SweepConfig(seeds=())


def test_run_files_without_their_sweep_json_are_not_resumed(tiny, tmp_path) -> None:
    """Without sweep.json the runs' settings are unknown: adopting them would mix sweeps silently."""
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    run_sweep(config)
    (tmp_path / "sweep.json").unlink()
    with pytest.raises(InputError, match="missing") as info:
        run_sweep(SweepConfig(**{**config.__dict__, "lr": 1e-4}))
    assert info.value.source == str(tmp_path / "sweep.json")


def test_table_options_are_no_part_of_a_named_dataset_sweep() -> None:
    """The CLI always passes its table options; for ``frappe`` they are unused, so a CLI sweep and the
    benchmark's (no table options) share one folder identity and resume each other's runs."""
    from recsys.data.ctr_table import TableCTRConfig

    assert SweepConfig(dataset="frappe", table=TableCTRConfig(label="clicked")).table is None
    assert SweepConfig(dataset="log.csv", table=TableCTRConfig(label="clicked")).table.label == "clicked"


def test_a_named_dataset_folder_that_recorded_table_options_still_resumes(tmp_path) -> None:
    """Folders the CLI wrote before table options left a named dataset's identity still resume."""
    from dataclasses import asdict

    from recsys.data.ctr_table import TableCTRConfig

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "dcnv2__full__1__s0.json").write_text("{}")
    identity = {"dataset": "frappe", "table": None, "rows": [3, 1, 1]}
    (tmp_path / sweep.IDENTITY).write_text(json.dumps({**identity, "table": asdict(TableCTRConfig())}))
    sweep._check_identity(tmp_path, {**identity, "min_epochs": 1, "first_order": "free", "seeding": 1,
                                     "lr": 1e-2, "embedding_l2": 1e-2})
    with pytest.raises(InputError, match="rows"):
        sweep._check_identity(tmp_path, {**identity, "rows": [4, 1, 1]})


def test_damaged_run_files_are_run_again_and_a_damaged_identity_is_named(tiny, tmp_path) -> None:
    config = SweepConfig(models=("wdl",), methods=("hashing", "qr"), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    first = run_sweep(config)
    runs = tmp_path / "runs"
    (runs / "wdl__hashing__0.5__s0.json").write_text("{}")  # empty record: not a finished run
    (runs / "wdl__qr__0.5__s0.json").write_text('{"model": "wdl", "meth')  # truncated
    with pytest.warns(UserWarning, match="running it again") as caught:
        again = run_sweep(config)
    assert {str(w.message).split(":")[0] for w in caught} >= {str(runs / "wdl__qr__0.5__s0.json")}
    assert again.height == first.height and again["status"].to_list() == first["status"].to_list()
    assert json.loads((runs / "wdl__hashing__0.5__s0.json").read_text())["method"] == "hashing"
    (tmp_path / "sweep.json").write_text('{"dataset": ')
    with pytest.raises(InputError, match=r"sweep\.json: unreadable"):
        run_sweep(config)


def test_edited_data_of_the_same_shape_is_not_resumed(tiny, tmp_path, monkeypatch) -> None:
    config = SweepConfig(models=("wdl",), methods=("hashing",), budgets=(0.5,), seeds=(0,),
                         out_dir=str(tmp_path), max_epochs=1, progress=False)
    run_sweep(config)
    tiny.train.labels[:10] = 1 - tiny.train.labels[:10]  # ten labels fixed in place: same shape
    with pytest.raises(InputError, match="data_sha256"):
        run_sweep(config)
    stored = json.loads((tmp_path / "sweep.json").read_text())
    del stored["data_sha256"]  # a folder from before the checksum was recorded still resumes
    (tmp_path / "sweep.json").write_text(json.dumps(stored))
    run_sweep(config)
    assert "data_sha256" in json.loads((tmp_path / "sweep.json").read_text())  # and is checked from now on
    tiny.train.labels[:10] = 1 - tiny.train.labels[:10]
    with pytest.raises(InputError, match="data_sha256"):
        run_sweep(config)


def test_workers_train_the_same_runs_as_one_process(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sweep, "commit", lambda: "abc1234")  # the workers record the parent's commit
    common = {"models": ("wdl",), "methods": ("hashing", "int8"), "budgets": (0.5, 0.01), "seeds": (0, 1),
              "max_epochs": 1, "progress": False}
    one = run_sweep(SweepConfig(**common, out_dir=str(tmp_path / "one")))
    two = run_sweep(SweepConfig(**common, out_dir=str(tmp_path / "two"), workers=2))
    assert two["method"].to_list() == one["method"].to_list()  # rows in run order, whatever finished first
    columns = ["status", "stored_bytes", "val_auc", "test_auc", "test_logloss"]
    assert two.select(columns).equals(one.select(columns))
    assert len(list((tmp_path / "two" / "runs").glob("*.json"))) == one.height == 10
    assert set(two.filter(pl.col("status") == "ok")["commit"]) == {"abc1234"}


def test_runs_trained_at_counts_finished_runs_per_commit_in_commit_order() -> None:
    runs = pl.DataFrame({"status": ["ok", "ok", "infeasible", "ok", "diverged"],
                         "commit": ["bbb", "aaa", None, "bbb", "ccc"]})
    assert sweep.runs_trained_at(runs) == [("aaa", 1), ("bbb", 2)]
