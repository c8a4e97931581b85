"""Checkpoints of CTR training (:mod:`recsys.training.ctr_checkpoint`): a run killed after an epoch and
resumed ends exactly as an uninterrupted one; a checkpoint resumes only the same run on the same data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import recsys.training.ctr as ctr_training
from embeddings.autodim import AutoDimTable
from recsys.data.ctr import CTRDataset, CTRField, CTRSchema, split_dataset
from recsys.training.ctr import CTRTrainConfig, train_ctr
from recsys.training.ctr_checkpoint import checkpoint_path
from sparsekit.errors import ArtifactError, InputError

FIELDS = [4, 6, 5]


def _data(rows: int = 1200, seed: int = 0) -> CTRDataset:
    rng = np.random.default_rng(seed)
    local = np.stack([rng.integers(0, n, rows) for n in FIELDS], 1)
    logit = (local[:, 0] - 1.5) + 1.5 * ((local[:, 1] % 2) == (local[:, 2] % 2)) - 0.75
    labels = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)
    schema = CTRSchema(tuple(CTRField(f"f{i}", n) for i, n in enumerate(FIELDS)))
    return split_dataset("toy", schema, local + schema.offsets, labels, seed=0)


def _config(**overrides: object) -> CTRTrainConfig:
    fields = {"model": "deepfm", "embed_dim": 4, "hidden": (16,), "batch_size": 128, "max_epochs": 4,
              "patience": 3, "progress": False, "device": "cpu", "threads": 1}
    return CTRTrainConfig(**(fields | overrides))


class _Killed(Exception):
    pass


def _kill_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Make training die at the start of epoch ``epochs + 1`` (after that epoch's checkpoint)."""
    original, calls = ctr_training._run_epoch, []

    def dying(*args: object, **kwargs: object) -> None:
        if len(calls) == epochs:
            raise _Killed
        calls.append(1)
        original(*args, **kwargs)

    monkeypatch.setattr(ctr_training, "_run_epoch", dying)


def _assert_same_run(a: ctr_training.CTRTrainResult, b: ctr_training.CTRTrainResult) -> None:
    assert [h["epoch"] for h in a.history] == [h["epoch"] for h in b.history]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["val_auc"] for h in a.history] == [h["val_auc"] for h in b.history]
    assert a.best_epoch == b.best_epoch
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=0, atol=0)


def _autodim_table() -> AutoDimTable:
    torch.manual_seed(7)  # the table is built before train_ctr seeds: seed it the same way every time
    return AutoDimTable(sum(FIELDS), 4, 1.0, field_dims=FIELDS, search_fraction=0.4)


@pytest.mark.parametrize("table", [None, "autodim"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          table: str | None) -> None:
    data = _data()
    build = _autodim_table if table else (lambda: None)
    straight = train_ctr(_config(), data, build())
    ckpt = str(tmp_path / "ckpt")
    with monkeypatch.context() as patch:
        _kill_after(patch, 1)  # AutoDim is still searching then (its first 40% of steps)
        with pytest.raises(_Killed):
            train_ctr(_config(checkpoint_dir=ckpt), data, build())
    assert (checkpoint_path(_config(checkpoint_dir=ckpt)) / "state.pt").is_file()
    resumed = train_ctr(_config(checkpoint_dir=ckpt, resume=True), data, build())
    _assert_same_run(straight, resumed)


def test_resuming_a_finished_run_trains_nothing_and_returns_its_model(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data()
    ckpt = str(tmp_path / "ckpt")
    first = train_ctr(_config(checkpoint_dir=ckpt), data)
    _kill_after(monkeypatch, 0)  # any epoch trained would raise
    again = train_ctr(_config(checkpoint_dir=ckpt, resume=True), data)
    _assert_same_run(first, again)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    data = _data(600)
    fresh = train_ctr(_config(max_epochs=2), data)
    resumed = train_ctr(_config(max_epochs=2, checkpoint_dir=str(tmp_path / "none"), resume=True), data)
    _assert_same_run(fresh, resumed)


def test_a_checkpoint_resumes_only_its_own_run(tmp_path: Path) -> None:
    data = _data(600)
    ckpt = str(tmp_path / "ckpt")
    train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt), data)
    with pytest.raises(ArtifactError, match=r"different config \(fields \['lr'\]\)"):
        train_ctr(_config(max_epochs=1, lr=0.1, checkpoint_dir=ckpt, resume=True), data)
    with pytest.raises(ArtifactError, match="other training data"):
        train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True), _data(600, seed=1))
    other_val = replace(data, val=replace(data.val, labels=1.0 - data.val.labels))  # same train rows
    with pytest.raises(ArtifactError, match=r"other training data \(fields \['val_sha256'\]\)"):
        train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True), other_val)
    with pytest.raises(ArtifactError, match="different embedding table"):
        train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True), data, _autodim_table())
    # runtime fields may differ
    train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True, eval_batch_size=64), data)


def test_a_checkpoint_from_before_the_wide_option_resumes_as_table_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(600)
    ckpt = str(tmp_path / "ckpt")
    current = ctr_training.run_identity

    def without_wide(*args: object) -> dict:
        identity = current(*args)
        del identity["config"]["wide"]  # what versions before ``wide`` recorded
        return identity

    with monkeypatch.context() as patch:
        patch.setattr(ctr_training, "run_identity", without_wide)
        train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt), data)
    train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True), data)  # resumes: table mode
    with pytest.raises(ArtifactError, match=r"different config \(fields \['wide'\]\)"):
        train_ctr(_config(max_epochs=1, checkpoint_dir=ckpt, resume=True, wide="projected"), data)


def test_checkpoint_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        _config(resume=True)
    assert info.value.source == "resume"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError) as info:
        train_ctr(_config(max_epochs=1, checkpoint_dir=str(blocker / "ckpt")), _data(600))
    assert info.value.source == "checkpoint_dir"


def test_starting_over_beside_a_checkpoint_warns_that_it_will_be_replaced(tmp_path: Path) -> None:
    config = _config(max_epochs=1, checkpoint_dir=str(tmp_path / "ckpt"))
    train_ctr(config, _data(600))
    with pytest.warns(UserWarning, match="starting over without resume"):
        train_ctr(config, _data(600))


def test_a_crash_while_the_checkpoint_was_being_replaced_still_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill between the two renames that replace the checkpoint leaves only its backup
    # (sparsekit.artifacts._publish): resume must restore and continue it, not silently start over.
    from sparsekit.atomic import temp_sibling

    data = _data(600)
    straight = train_ctr(_config(max_epochs=3), data)
    config = _config(max_epochs=3, checkpoint_dir=str(tmp_path / "ckpt"))
    with monkeypatch.context() as patch:
        _kill_after(patch, 2)
        with pytest.raises(_Killed):
            train_ctr(config, data)
    target = checkpoint_path(config)
    target.rename(temp_sibling(target, "old"))
    trained: list[int] = []
    original = ctr_training._run_epoch

    def counting(run: ctr_training.CTRRun, *args: object) -> None:
        trained.append(run.epoch + 1)
        original(run, *args)

    monkeypatch.setattr(ctr_training, "_run_epoch", counting)
    resumed = train_ctr(_config(max_epochs=3, checkpoint_dir=config.checkpoint_dir, resume=True), data)
    assert trained == [3]
    _assert_same_run(straight, resumed)


def test_resume_keeps_the_epochs_waited_toward_patience(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # lr 0.1 on 1200 rows: best at epoch 2, epochs 3 and 4 worse, so patience 2 stops after epoch 4.
    # Killed after epoch 3 (one epoch waited), the resumed run must stop after epoch 4 as well.
    data = _data()
    config = _config(max_epochs=8, patience=2, lr=0.1)
    straight = train_ctr(config, data)
    assert len(straight.history) == 4 and straight.best_epoch == 2
    ckpt = str(tmp_path / "ckpt")
    with monkeypatch.context() as patch:
        _kill_after(patch, 3)
        with pytest.raises(_Killed):
            train_ctr(_config(max_epochs=8, patience=2, lr=0.1, checkpoint_dir=ckpt), data)
    resumed = train_ctr(_config(max_epochs=8, patience=2, lr=0.1, checkpoint_dir=ckpt, resume=True), data)
    _assert_same_run(straight, resumed)
