"""The contract every intra-feature compression table keeps (MDE, AutoDim, OptEmbed, DeepLight, PEP,
AutoSrh, INT8, INT16, ALPT, AdaptEmbed, LSQ).

For each kind: forward / backward through the training hooks on tiny shapes; the serving table that
``finalize()`` returns stores at most 1.02 x the budget and exactly its parameter + buffer bytes; the
(method, budget) cells of the Frappe grid that are infeasible raise ``BudgetError`` at construction;
out-of-range ids name "feature ids"; ``config()`` rebuilds both the training and the serving table;
a trained model saves and loads back with its serving table; and DeepFM learns a Frappe sample through
every table at a feasible budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import embeddings.adaptembed
import embeddings.alpt
import embeddings.autodim
import embeddings.autosrh
import embeddings.deeplight
import embeddings.lsq
import embeddings.mde
import embeddings.optembed
import embeddings.pep
import embeddings.quantization  # noqa: F401  (the imports register the kinds)
from embeddings.table import BUDGET_SLACK, BudgetError, EmbeddingTable, build_table, table_class
from recsys.data.ctr import CTRDataset, CTRField, CTRSchema, CTRSplit, load_frappe_ctr, split_dataset
from recsys.training.ctr import CTRTrainConfig, load_ctr_model, predict, save_ctr_model, train_ctr
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError

KINDS = ["mde", "autodim", "optembed", "deeplight", "pep", "autosrh", "int8", "int16", "alpt", "adaptembed",
         "lsq"]
FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]
GRID = (0.5, 0.1, 0.01, 0.001)
FEASIBLE = {  # on Frappe (5,382 features, 10 fields, dim 16)
    "mde": (0.5, 0.1),
    "autodim": (0.5, 0.1),
    "optembed": GRID,
    "deeplight": GRID,
    "pep": GRID,
    "autosrh": GRID,
    "int8": (0.5,),
    "int16": (0.5,),
    "alpt": (0.5, 0.1),
    "adaptembed": GRID,
    "lsq": (0.5, 0.1),
}
TINY_FIELDS = [40, 90, 20, 30]  # big enough for INT16 (scales + offsets within the 2% slack)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensor ops: one thread


def _ids(fields: list[int], batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *fields[:-1]]).cumsum(0)
    local = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in fields], dim=1)
    return local + offsets


def _train(table: EmbeddingTable, ids: torch.Tensor, steps: int = 6, total: int = 12) -> None:
    """A few optimizer steps on a random linear loss, calling the training hooks like ``train_ctr``."""
    optim = torch.optim.Adam(table.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    table.train()
    for step in range(1, steps + 1):
        out = table(ids)
        loss = (out * torch.randn(out.shape, generator=gen)).sum()
        extra = table.penalty()
        if extra is not None:
            loss = loss + extra
        optim.zero_grad()
        loss.backward()
        optim.step()
        table.after_step(step, total)
    table.eval()


def _real_bytes(table: EmbeddingTable) -> int:
    """Bytes of the state dict plus the (non-persistent) int64 field offsets."""
    state = sum(t.numel() * t.element_size() for t in table.state_dict().values())
    return state + (0 if table.field_dims is None else 8 * len(table.field_dims))


def _make(kind: str, budget: float, fields: list[int] = FRAPPE_FIELDS) -> EmbeddingTable:
    return table_class(kind)(sum(fields), 16, budget, field_dims=fields)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_on_tiny_shapes(kind: str) -> None:
    table = _make(kind, 0.5, TINY_FIELDS)
    ids = _ids(TINY_FIELDS, 8)
    out = table(ids)
    assert out.shape == (8, 4, 16) and out.dtype == torch.float32
    # a random linear loss: its gradient does not vanish where a table starts at zero (low-bit codes)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    grads = [p.grad for p in table.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    assert table.lookup(ids.flatten()).shape == (32, 16)  # any id shape


@pytest.mark.parametrize("kind", KINDS)
def test_frappe_grid_feasibility(kind: str) -> None:
    for budget in GRID:
        if budget in FEASIBLE[kind]:
            _make(kind, budget)
        else:
            with pytest.raises(BudgetError):
                _make(kind, budget)


@pytest.mark.parametrize("kind", KINDS)
def test_serving_table_meets_the_budget_and_counts_real_bytes(kind: str) -> None:
    ids = _ids(FRAPPE_FIELDS, 256)
    for budget in FEASIBLE[kind]:
        table = _make(kind, budget)
        _train(table, ids)
        serving = table.finalize()
        assert serving.memory_bytes() <= BUDGET_SLACK * serving.budget_bytes()
        assert serving.memory_bytes() == _real_bytes(serving)
        assert serving.budget_bytes() == table.budget_bytes()
        serving.check_budget()


@pytest.mark.parametrize("kind", KINDS)
def test_finalize_serves_what_was_trained(kind: str) -> None:
    """The serving table returns the (eval-mode) vectors of the trained table, up to float16 scales."""
    table = _make(kind, 0.5, TINY_FIELDS)
    ids = _ids(TINY_FIELDS, 64)
    _train(table, ids, steps=12, total=12)  # past every search / ramp phase
    expected = table(ids).detach()
    serving = table.finalize()
    assert torch.allclose(serving(ids), expected, atol=1e-3 * expected.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_ids(kind: str) -> None:
    table = _make(kind, 0.5, TINY_FIELDS)
    for bad in (-1, sum(TINY_FIELDS)):
        ids = _ids(TINY_FIELDS, 3)
        ids[1, 3] = bad
        for module in (table, table.finalize()):
            with pytest.raises(InputError) as info:
                module(ids)
            assert info.value.source == "feature ids"


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trips_training_and_serving_tables(kind: str) -> None:
    table = _make(kind, 0.5, TINY_FIELDS)
    ids = _ids(TINY_FIELDS, 32)
    _train(table, ids, steps=3)
    serving_kind = None
    for module in (table, table.finalize()):
        module.eval()
        again = build_table(module.config())
        again.load_state_dict(module.state_dict())
        again.eval()
        assert type(again) is type(module) and again.config() == module.config()
        assert torch.equal(again(ids), module(ids))
        serving_kind = module.kind
    assert serving_kind in {"mde", "csr-rows", "quantized", "adaptembed-rows"}


@pytest.mark.parametrize("kind", KINDS)
def test_trained_model_saves_and_loads_with_its_serving_table(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    schema = CTRSchema(tuple(CTRField(f"f{i}", n) for i, n in enumerate(TINY_FIELDS)))
    local = np.stack([rng.integers(0, n, 600) for n in TINY_FIELDS], 1)
    labels = ((local[:, 0] % 2) == (local[:, 1] % 2)).astype(np.float32)
    data = split_dataset("toy", schema, local + schema.offsets, labels, seed=0)
    table = table_class(kind)(schema.num_features, 16, 0.5, field_dims=schema.field_dims)
    config = CTRTrainConfig(
        hidden=(16,), batch_size=128, max_epochs=2, patience=1, progress=False, device="cpu", threads=1
    )
    model = train_ctr(config, data, table).model
    loaded = load_ctr_model(save_ctr_model(model, tmp_path / "model", schema=schema, config=config))
    assert type(loaded.model.embedding) is type(model.embedding)
    assert np.array_equal(predict(loaded.model, data.test.features), predict(model, data.test.features))


def _frappe_sample() -> CTRDataset:
    root = dataset_path("frappe-libfm")
    if root is None:
        pytest.skip("dataset 'frappe-libfm' not found under the data root (set SPARSEKIT_DATA)")
    full = load_frappe_ctr(root, seed=0)
    return CTRDataset(
        "frappe-sample",
        full.schema,
        CTRSplit(full.train.features[:12000], full.train.labels[:12000]),
        CTRSplit(full.val.features[:3000], full.val.labels[:3000]),
        CTRSplit(full.test.features[:0], full.test.labels[:0]),
    )


@pytest.mark.data
@pytest.mark.parametrize("kind", KINDS)
def test_deepfm_learns_frappe_sample(kind: str) -> None:
    data = _frappe_sample()
    budget = 0.5 if kind in ("int8", "int16") else 0.1
    torch.manual_seed(0)
    table = table_class(kind)(data.num_features, 16, budget, field_dims=data.field_dims)
    config = CTRTrainConfig(
        model="deepfm", hidden=(64, 64), lr=3e-3, batch_size=512, max_epochs=2, patience=1,
        progress=False, device="cpu", threads=1,
    )
    result = train_ctr(config, data, table)
    served = result.model.embedding
    assert served is not table or kind == "mde"  # search / pruning / quantized tables are replaced
    assert served.memory_bytes() <= BUDGET_SLACK * served.budget_bytes()
    assert result.metrics["val_auc"] > 0.7
