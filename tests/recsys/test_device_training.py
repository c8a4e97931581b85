"""Training on every device: each compressed embedding table (and composition) inside a CTR model, and CF
models under DSL.

The CUDA cases cover what no CPU run exercises: masks, codebooks, hash coefficients, scores and pruning
state created inside the tables must follow the model to the GPU, and the served table must still meet
its budget there. The CPU cases run the same test bodies (so a broken test shows up in CI); the CUDA
cases are marked ``gpu`` and skip without CUDA (``make gpu-check`` runs them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from embeddings.registry import COMPOSED, METHODS, import_all
from embeddings.table import BudgetError, table_class
from recsys.data.ctr import CTRField, CTRSchema, split_dataset
from recsys.data.implicit import ImplicitDataset
from recsys.training.cf import CFTrainConfig, train_cf
from recsys.training.ctr import CTRTrainConfig, train_ctr

import_all()
FIELDS = (300, 200, 100, 50)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
TABLE_KINDS = METHODS + COMPOSED


def _need(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def _toy_implicit(users: int = 80, items: int = 120) -> ImplicitDataset:
    train = sp.random(users, items, density=0.08, format="csr", random_state=1, data_rvs=np.ones)
    test = sp.random(users, items, density=0.02, format="csr", random_state=2, data_rvs=np.ones)
    test = test - test.multiply(train)  # held-out items are unseen in train
    test.eliminate_zeros()
    return ImplicitDataset(train.astype(np.float32).tocsr(), test.astype(np.float32).tocsr(), users, items)


def _toy_ctr(rows: int = 3000):
    rng = np.random.default_rng(0)
    local = np.stack([rng.integers(0, n, rows) for n in FIELDS], 1)
    logit = (local[:, 0] % 3 - 1.0) + 1.5 * ((local[:, 1] % 2) == (local[:, 2] % 2)) - 0.75
    labels = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)
    schema = CTRSchema(tuple(CTRField(f"f{i}", n) for i, n in enumerate(FIELDS)))
    return split_dataset("toy", schema, local + schema.offsets, labels, seed=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(TABLE_KINDS))
def test_every_table_trains_in_a_ctr_model(method: str, device: str) -> None:
    _need(device)
    data = _toy_ctr()
    try:
        table = table_class(method)(data.num_features, 8, 0.5, field_dims=data.field_dims)
    except BudgetError as exc:
        pytest.skip(f"{method} cannot meet budget 0.5 on the toy vocabulary: {exc}")
    config = CTRTrainConfig(model="deepfm", embed_dim=8, hidden=(16,), lr=1e-2, batch_size=256,
                            max_epochs=4, patience=4, progress=False, device=device, threads=1)
    result = train_ctr(config, data, table)
    served = result.model.embedding
    assert all(p.device.type == device for p in result.model.parameters())
    assert all(b.device.type == device for b in served.buffers())
    assert math.isfinite(result.metrics["val_auc"]) and result.metrics["val_auc"] > 0.5
    assert served.memory_bytes() <= 1.02 * 0.5 * served.full_bytes()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["mf", "lightgcn", "neumf"])
def test_cf_models_train_under_dsl(model: str, device: str) -> None:
    _need(device)
    config = CFTrainConfig(model=model, dim=16, layers=2, lr=0.02, batch_size=256, epochs=2, density=0.25,
                           dsl_delta_t=2, device=device, progress=False)
    trained, history = train_cf(config, _toy_implicit())
    assert all(math.isfinite(h["loss"]) for h in history)
    sparse = trained.sparse_parameters()
    assert sparse
    for param in sparse.values():
        assert param.device.type == device
        assert int((param != 0).sum()) <= round(0.25 * param.numel())
