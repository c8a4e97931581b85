"""CTR models (DLRM, Wide&Deep, DeepFM, DCNv2) over the embedding-table interface, and their trainer.

Every model runs forward and backward on any table, its interaction layer matches a brute-force
computation, saved models (with their schema) load back to identical outputs, and on a small Frappe
sample every model learns (validation AUC > 0.7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embeddings.full import FullTable
from embeddings.table import FieldwiseTable
from recsys.data.ctr import CTRDataset, CTRSplit, load_frappe_ctr, split_dataset
from recsys.models.ctr.dcnv2 import DCNv2
from recsys.models.ctr.deepfm import DeepFM, fm_interaction
from recsys.models.ctr.dlrm import DLRM
from recsys.models.ctr.wdl import WideDeep
from recsys.training.ctr import (
    CTR_MODELS,
    CTRTrainConfig,
    build_ctr_model,
    evaluate_ctr,
    load_ctr_model,
    save_ctr_model,
    train_ctr,
)
from sparsekit.dataroot import dataset_path
from sparsekit.errors import ArtifactError, InputError, TrainingDiverged

FIELDS = [4, 6, 3, 5]
MODELS = [DLRM, WideDeep, DeepFM, DCNv2]


def _ids(batch: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, 4, 10, 13])
    return torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in FIELDS], 1) + offsets


def _model(cls, table=None, **kwargs):
    torch.manual_seed(0)
    table = table or FullTable(sum(FIELDS), 8, field_dims=FIELDS, init_std=0.1)
    return cls(table, len(FIELDS), hidden=(16, 12), **kwargs)


@pytest.mark.parametrize("cls", MODELS)
def test_forward_backward_with_full_table(cls) -> None:
    model = _model(cls)
    ids = _ids()
    logits = model(ids)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(8)).backward()
    grad = model.embedding.weight.grad
    used = torch.zeros(sum(FIELDS), dtype=torch.bool)
    used[ids.flatten()] = True
    assert grad[used].abs().sum() > 0 and grad[~used].abs().sum() == 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cls", MODELS)
def test_any_table_and_id_validation(cls) -> None:
    model = _model(cls, FieldwiseTable(sum(FIELDS), 8, field_dims=FIELDS))
    assert model(_ids()).shape == (8,)
    bad = _ids()
    bad[0, 3] = sum(FIELDS)
    with pytest.raises(InputError) as info:
        model(bad)
    assert info.value.source == "feature ids"


@pytest.mark.parametrize("cls", [WideDeep, DeepFM])
def test_projected_first_order_is_a_per_field_dot_with_the_embeddings(cls, tmp_path: Path) -> None:
    model = _model(cls, wide="projected")
    assert model.first_order is None and model.first_order_bytes() == 4 * len(FIELDS) * 8
    with torch.no_grad():
        model.wide_projection.normal_()
    ids = _ids()
    emb = model.embedding(ids)
    brute = sum((emb[:, f] * model.wide_projection[f]).sum(-1) for f in range(len(FIELDS)))
    assert torch.allclose(model.first_order_logit(ids, emb), brute, atol=1e-6)
    torch.nn.functional.binary_cross_entropy_with_logits(model(ids), torch.ones(8)).backward()
    assert model.wide_projection.grad.abs().sum() > 0
    assert model.hparams["wide"] == "projected" and "wide" not in _model(cls).hparams  # table: as before
    path = save_ctr_model(model, tmp_path / "m")  # the mode travels in the artifact
    assert torch.equal(load_ctr_model(path).model(ids), model.eval()(ids))


def test_a_table_mode_model_charges_its_first_order_table() -> None:
    model = _model(DeepFM)
    assert model.wide_projection is None and model.first_order_bytes() == model.first_order.memory_bytes()


def test_bad_wide_options_name_themselves() -> None:
    with pytest.raises(InputError, match="wide"):
        _model(DeepFM, wide="sometimes")
    with pytest.raises(InputError, match="first_order"):
        _model(DeepFM, wide="projected", first_order=FullTable(sum(FIELDS), 1, field_dims=FIELDS))
    with pytest.raises(InputError, match=r"wide.*dcnv2 has no first-order part"):
        CTRTrainConfig(model="dcnv2", wide="projected")
    built = build_ctr_model(CTRTrainConfig(model="deepfm", wide="projected"), FIELDS)
    assert isinstance(built.wide_projection, torch.nn.Parameter)


def test_fm_interaction_is_the_sum_of_pairwise_dots() -> None:
    emb = torch.randn(5, 4, 3, dtype=torch.float64)
    brute = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    assert torch.allclose(fm_interaction(emb), brute)


def test_dlrm_top_mlp_reads_embeddings_and_pairwise_dots() -> None:
    model = _model(DLRM).double()
    ids = _ids()
    emb = model.embedding(ids)
    dots = torch.stack([(emb[:, i] * emb[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4)], 1)
    expected = model.top(torch.cat([emb.flatten(1), dots], 1)).squeeze(1)
    assert torch.allclose(model(ids), expected)
    assert model.top[0].in_features == 4 * 8 + 6


def test_dcnv2_cross_layer_formula() -> None:
    model = _model(DCNv2, cross_layers=2).double()
    ids = _ids()
    x0 = model.embedding(ids).flatten(1)
    x = x0
    for layer in model.cross:
        x = x0 * (x @ layer.linear.weight.T + layer.linear.bias) + x
    expected = model.out(torch.cat([x, model.deep(x0)], 1)).squeeze(1)
    assert torch.allclose(model(ids), expected)
    assert model.cross[0].linear.weight.shape == (32, 32)  # full rank


def test_build_ctr_model_defaults_and_unknown_name() -> None:
    model = build_ctr_model(CTRTrainConfig(model="deepfm"), FIELDS)
    assert (
        isinstance(model, DeepFM)
        and model.embedding.dim == 16
        and model.embedding.field_dims == tuple(FIELDS)
    )
    assert set(CTR_MODELS) == {"dlrm", "wdl", "deepfm", "dcnv2"}
    with pytest.raises(InputError) as info:
        build_ctr_model(CTRTrainConfig(model="fm"), FIELDS)
    assert info.value.source == "model"


def _toy_data(rows: int = 3000) -> CTRDataset:
    """Clicks driven by field 0 and a field-1 x field-2 interaction."""
    rng = np.random.default_rng(0)
    local = np.stack([rng.integers(0, n, rows) for n in FIELDS], 1)
    logit = (local[:, 0] - 1.5) + 1.5 * ((local[:, 1] % 2) == (local[:, 2] % 2)) - 0.75
    labels = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)
    from recsys.data.ctr import CTRField, CTRSchema

    schema = CTRSchema(tuple(CTRField(f"f{i}", n) for i, n in enumerate(FIELDS)))
    return split_dataset("toy", schema, local + schema.offsets, labels, seed=0)


def test_trainer_early_stopping_restores_the_best_epoch() -> None:
    data = _toy_data()
    result = train_ctr(_small_config(), data)
    aucs = [h["val_auc"] for h in result.history]
    assert result.best_epoch == int(np.argmax(aucs)) + 1
    assert len(aucs) == 6 or len(aucs) == result.best_epoch + 1  # stopped after 1 epoch without improvement
    assert result.metrics["val_auc"] == pytest.approx(max(aucs))
    assert result.metrics["val_auc"] > 0.7
    assert result.metrics["train_samples_per_s"] > 0 and result.metrics["inference_samples_per_s"] > 0
    assert not result.model.training
    again = train_ctr(_small_config(), data)  # seeded
    assert again.metrics["val_auc"] == pytest.approx(result.metrics["val_auc"])


@pytest.mark.parametrize("name", ["dcnv2", "dlrm"])
def test_save_and_load_round_trip(tmp_path: Path, name: str) -> None:
    data = _toy_data(600)
    config = CTRTrainConfig(
        model=name, embed_dim=4, hidden=(8,), max_epochs=1, progress=False, device="cpu", threads=1
    )
    model = train_ctr(config, data).model
    path = save_ctr_model(model, tmp_path / "m", schema=data.schema, config=config, metrics={"val_auc": 0.5})
    loaded = load_ctr_model(path)
    ids = torch.from_numpy(data.test.features)
    assert torch.equal(loaded.model(ids), model(ids))
    assert loaded.schema == data.schema and loaded.params["config"]["model"] == name
    assert evaluate_ctr(loaded.model, data.test)["auc"] == evaluate_ctr(model, data.test)["auc"]
    with pytest.raises(ArtifactError):
        save_ctr_model(model, path)  # no silent overwrite
    (path / "model.pt").write_bytes(b"corrupt")
    with pytest.raises(ArtifactError):
        load_ctr_model(path)


@pytest.mark.data
@pytest.mark.parametrize("name", ["dlrm", "wdl", "deepfm", "dcnv2"])
def test_every_model_learns_frappe_sample(name: str) -> None:
    root = dataset_path("frappe-libfm")
    if root is None:
        pytest.skip("dataset 'frappe-libfm' not found under the data root (set SPARSEKIT_DATA)")
    full = load_frappe_ctr(root, seed=0)
    small = CTRDataset(
        "frappe-sample",
        full.schema,
        CTRSplit(full.train.features[:12000], full.train.labels[:12000]),
        CTRSplit(full.val.features[:3000], full.val.labels[:3000]),
        CTRSplit(full.test.features[:0], full.test.labels[:0]),
    )
    config = CTRTrainConfig(
        model=name,
        hidden=(64, 64),
        lr=3e-3,
        batch_size=512,
        max_epochs=2,
        patience=1,
        progress=False,
        device="cpu",
        threads=1,
    )
    result = train_ctr(config, small)
    assert result.metrics["val_auc"] > 0.7


def _small_config(**overrides: object) -> CTRTrainConfig:
    fields = {"model": "deepfm", "embed_dim": 4, "hidden": (16,), "lr": 1e-2, "batch_size": 256,
              "max_epochs": 6, "patience": 1, "progress": False, "device": "cpu", "threads": 1}
    return CTRTrainConfig(**(fields | overrides))


def test_min_epochs_holds_off_early_stopping() -> None:
    """At lr 0 validation AUC never improves after epoch 1: patience 1 stops at epoch 2, unless
    ``min_epochs`` asks for more; the best epoch stays the first either way."""
    data = _toy_data(600)
    plain = train_ctr(_small_config(lr=0.0), data)
    held = train_ctr(_small_config(lr=0.0, min_epochs=4), data)
    assert len(plain.history) == 2 and len(held.history) == 4
    assert plain.best_epoch == held.best_epoch == 1


@pytest.mark.parametrize(("overrides", "field"), [({"min_epochs": 0}, "min_epochs"),
                                                  ({"min_epochs": 7}, "min_epochs"),
                                                  ({"patience": 0}, "patience"),
                                                  ({"max_epochs": 1.5}, "max_epochs")])
def test_epoch_settings_are_checked(overrides: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        _small_config(**overrides)
    assert info.value.source == field


def test_trainer_keeps_only_checkpoints_whose_table_has_settled() -> None:
    """A pruning table (PEP) prunes half-way: the restored checkpoint is a pruned one, and it serves the
    validation AUC it was chosen with (not a pre-pruning model pruned afterwards)."""
    from embeddings.pep import PEPTable

    data = _toy_data()
    table = PEPTable(data.num_features, 4, 0.5, field_dims=data.field_dims, search_fraction=0.5)
    result = train_ctr(_small_config(), data, table)
    settled = [h["settled"] for h in result.history]
    assert settled[0] is False and settled[-1] is True  # the search phase ran, then pruning happened
    first = settled.index(True) + 1
    assert result.best_epoch >= first
    best = max(h["val_auc"] for h in result.history if h["settled"])
    assert result.metrics["val_auc"] == pytest.approx(best, abs=1e-6)


def test_trainer_refuses_a_table_that_never_settles() -> None:
    class Searching(FullTable):
        @property
        def settled(self) -> bool:
            return False

    data = _toy_data()
    table = Searching(data.num_features, 4, field_dims=data.field_dims)
    with pytest.raises(RuntimeError, match="never finished its search phase"):
        train_ctr(_small_config(max_epochs=2), data, table)


def test_a_table_compressed_when_finalized_is_validated_as_it_will_serve() -> None:
    """Dedup trains a full table and clusters its rows only when finalized: every epoch is validated
    through a finalized copy, so the kept epoch and the reported AUC are those of the served table."""
    from embeddings.dedup import DedupTable

    data = _toy_data()
    table = DedupTable(data.num_features, 4, 0.5, field_dims=data.field_dims)
    result = train_ctr(_small_config(), data, table)
    assert result.model.embedding.kind == "codebook"
    kept = result.history[result.best_epoch - 1]["val_auc"]
    assert result.metrics["val_auc"] == pytest.approx(kept, abs=1e-9)
    assert result.best_epoch == int(np.argmax([h["val_auc"] for h in result.history])) + 1


def test_a_diverged_run_says_so() -> None:
    """Non-finite predictions give AUC NaN (never kept) instead of a scikit-learn crash; a run that is
    never finite raises TrainingDiverged naming the learning rate."""
    data = _toy_data()
    model = _model(DCNv2)
    with torch.no_grad():
        model.embedding.weight.fill_(float("nan"))
    val = evaluate_ctr(model, data.val)
    assert np.isnan(val["auc"]) and val["logloss"] == float("inf")
    with pytest.raises(TrainingDiverged, match="lr 1e\\+30"):
        train_ctr(_small_config(lr=1e30, max_epochs=2), data)
