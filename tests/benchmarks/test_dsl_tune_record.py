"""The DSL tuning record: dsl_gowalla_tune.json merges runs of one model at a time, so each model's entry
names the commit that trained it, beside its command and chosen settings."""

import argparse

import pytest

import benchmarks.dsl_gowalla as dsl


def test_tune_entry_names_its_commit_and_the_best_dev_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    recall = {(0.002, 200): 0.10, (0.005, 200): 0.12, (0.01, 200): 0.11, (0.005, 50): 0.13}

    def fake_train(config, data):  # stands in for train_cf
        dev = recall.get((config.lr, config.dsl_delta_t), 0.05)
        return None, [{"epoch": 1, "loss": 0.5, "recall@20": dev}]

    monkeypatch.setattr(dsl, "train_cf", fake_train)
    monkeypatch.setattr(dsl, "commit", lambda: "abc1234")
    args = argparse.Namespace(hparams=dsl.HPARAMS, budget=dsl.BUDGET_S, seed=0, device="cpu", progress=False)
    entry = dsl.tune_model("mf", None, args)
    assert entry["commit"] == "abc1234"
    assert entry["chosen"]["lr"]["dsl"] == 0.005 and entry["chosen"]["dsl_delta_t"] == 50
