"""The embedding-table contract for every inter-feature compression method.

Hashing, QR, TT-Rec, DHE, ROBE, DPQ, MGQE and dedup, and the compositions of hashing / QR with INT8 /
INT4 rows (embeddings.quantized_rows): forward/backward on tiny shapes, budget adherence
of the table that serves (exact byte accounting, Frappe shapes at the benchmark budgets), BudgetError
where a method cannot reach a budget, id validation, the config round trip (finalized tables too),
and, on a small Frappe sample, that DeepFM learns through each table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.dedup import DedupTable
from embeddings.dhe import DHETable
from embeddings.dpq import DPQTable, code_bits, packed_bytes
from embeddings.hashing import HashingTable
from embeddings.mgqe import MGQETable
from embeddings.qr import QRTable
from embeddings.quantized_rows import HashingInt4Table, HashingInt8Table, QRInt4Table, QRInt8Table
from embeddings.robe import ROBETable
from embeddings.table import BUDGET_SLACK, TABLES, BudgetError, EmbeddingTable, build_table
from embeddings.tt_rec import TTRecTable
from recsys.data.ctr import FRAPPE_FIELDS, CTRSplit, load_frappe_ctr
from recsys.models.ctr.deepfm import DeepFM
from recsys.training.ctr import CTRTrainConfig, load_ctr_model, save_ctr_model, train_ctr
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError

CLASSES = {
    "hashing": HashingTable,
    "qr": QRTable,
    "tt_rec": TTRecTable,
    "dhe": DHETable,
    "robe": ROBETable,
    "dpq": DPQTable,
    "mgqe": MGQETable,
    "dedup": DedupTable,
    "qr+int8": QRInt8Table,
    "qr+int4": QRInt4Table,
    "hashing+int8": HashingInt8Table,
    "hashing+int4": HashingInt4Table,
}
KINDS = sorted(CLASSES)
FRAPPE_DIMS = [size for _, size in FRAPPE_FIELDS]
FRAPPE_N = sum(FRAPPE_DIMS)
BUDGETS = (0.5, 0.1, 0.01, 0.001)
INFEASIBLE = {(kind, 0.001) for kind in KINDS
              if kind not in ("hashing", "robe", "qr+int4", "hashing+int8", "hashing+int4")}
TINY_FIELDS = [40, 100, 30, 30]
TINY_INFEASIBLE = {("dhe", 0.2), ("dhe", 0.1)}  # the narrowest 16-16x2-8 MLP is 2,720 bytes
TINY_N = sum(TINY_FIELDS)


def _tiny(kind: str, budget: float = 0.5, **options) -> EmbeddingTable:
    torch.manual_seed(0)
    return CLASSES[kind](TINY_N, 8, budget, field_dims=TINY_FIELDS, **options)


def _tiny_ids(batch: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, 40, 140, 170])
    return torch.stack([torch.randint(0, d, (batch,), generator=gen) for d in TINY_FIELDS], 1) + offsets


def _stored_bytes(table: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*table.parameters(), *table.buffers()])


@pytest.mark.parametrize("kind", KINDS)
def test_registered_under_its_kind(kind: str) -> None:
    assert TABLES[kind] is CLASSES[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_backward(kind: str) -> None:
    table = _tiny(kind)
    ids = _tiny_ids()
    out = table(ids)
    assert out.shape == (6, 4, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    grads = [p.grad for p in table.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert table.lookup(ids.flatten()).shape == (24, 8)  # any id shape
    torch.testing.assert_close(table.lookup(ids.flatten()).reshape(6, 4, 8), out)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_one_and_empty_batch(kind: str) -> None:
    table = _tiny(kind)
    for batch in (1, 0):
        assert table(_tiny_ids(batch)).shape == (batch, 4, 8)
        assert table.finalize().eval()(_tiny_ids(batch)).shape == (batch, 4, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_distinct_features_get_distinct_vectors(kind: str) -> None:
    table = _tiny(kind).eval()
    with torch.no_grad():
        out = table.lookup(torch.arange(TINY_N))
    assert torch.unique(out, dim=0).shape[0] > 1


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("kind", KINDS)
def test_frappe_budgets(kind: str, budget: float) -> None:
    if (kind, budget) in INFEASIBLE:
        with pytest.raises(BudgetError) as info:
            CLASSES[kind](FRAPPE_N, 16, budget, field_dims=FRAPPE_DIMS)
        assert info.value.source == kind
        return
    table = CLASSES[kind](FRAPPE_N, 16, budget, field_dims=FRAPPE_DIMS)
    if kind == "dedup" and budget == 0.5:  # k-means into 2,521 rows takes seconds: check the plan
        planned = packed_bytes(FRAPPE_N, code_bits(table.unique_rows)) + table.unique_rows * 16 * 4 + 80
        assert table.unique_rows == 2521 and planned <= table.budget_bytes()
        return
    table = table.finalize()
    assert table.memory_bytes() == _stored_bytes(table)
    assert table.memory_bytes() <= BUDGET_SLACK * table.budget_bytes()
    table.check_budget()
    if kind in ("hashing", "qr", "robe"):  # these use the budget (to within one row / chunk)
        assert table.memory_bytes() > table.budget_bytes() - 16 * 4 * (4 if kind == "qr" else 1)


@pytest.mark.parametrize("budget", [0.5, 0.2, 0.1])
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_budgets_of_the_serving_table(kind: str, budget: float) -> None:
    if (kind, budget) in TINY_INFEASIBLE:
        with pytest.raises(BudgetError):
            _tiny(kind, budget)
        return
    serving = _tiny(kind, budget).finalize()
    assert serving.memory_bytes() == _stored_bytes(serving)
    assert serving.memory_bytes() <= BUDGET_SLACK * serving.budget_bytes()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [-1, TINY_N, 10**9])
def test_out_of_range_ids(kind: str, bad: int) -> None:
    table = _tiny(kind)
    ids = _tiny_ids()
    ids[2, 1] = bad
    with pytest.raises(InputError, match="out of range") as info:
        table(ids)
    assert info.value.source == "feature ids"
    with pytest.raises(InputError):
        table.finalize()(ids)


def _train_a_little(table: EmbeddingTable) -> None:
    optim = torch.optim.Adam(table.parameters(), lr=1e-2)
    target = torch.randn(TINY_N, 8, generator=torch.Generator().manual_seed(5))
    for step in range(1, 4):
        ids = _tiny_ids(32, seed=step)
        loss = (table(ids) - target[ids]).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        table.after_step(step, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_training_and_finalized(kind: str) -> None:
    table = _tiny(kind)
    _train_a_little(table)
    table.eval()
    ids = _tiny_ids(16, seed=9)
    for source in (table, table.finalize()):
        again = build_table(source.config())
        again.load_state_dict(source.state_dict())
        assert type(again) is type(source) and again.config() == source.config()
        assert torch.equal(again.eval()(ids), source(ids))


@pytest.mark.parametrize("kind", KINDS)
def test_finalized_table_serves_what_the_trained_table_computed(kind: str) -> None:
    table = _tiny(kind, 0.5)
    _train_a_little(table)
    table.eval()
    ids = torch.arange(TINY_N).reshape(-1, 4)
    want = table(ids).detach()
    got = table.finalize()(ids)
    if kind == "dedup":  # lossy: rows are merged into at most `unique_rows` centroids
        assert (got - want).pow(2).sum() < want.pow(2).sum()
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_ctr_model_with_the_serving_table_saves_and_loads(kind: str, tmp_path) -> None:
    table = _tiny(kind)
    _train_a_little(table)
    model = DeepFM(table.finalize(), len(TINY_FIELDS), hidden=(8,)).eval()
    save_ctr_model(model, tmp_path / "model")
    loaded = load_ctr_model(tmp_path / "model").model
    ids = _tiny_ids(16, seed=4)
    assert type(loaded.embedding) is type(model.embedding)
    assert torch.equal(loaded(ids), model(ids))


@pytest.fixture(scope="module")
def frappe_sample():
    if dataset_path("frappe-libfm") is None:
        pytest.skip("frappe-libfm dataset not found")
    data = load_frappe_ctr()
    rng = np.random.default_rng(0)
    for name, rows in (("train", 20_000), ("val", 4_000), ("test", 4_000)):
        split = getattr(data, name)
        pick = rng.choice(len(split), rows, replace=False)
        setattr(data, name, CTRSplit(split.features[pick], split.labels[pick]))
    return data


@pytest.mark.data
@pytest.mark.parametrize("kind", KINDS)
def test_deepfm_learns_on_frappe_at_budget_0_1(kind: str, frappe_sample) -> None:
    table = CLASSES[kind](frappe_sample.num_features, 16, 0.1, field_dims=frappe_sample.field_dims)
    config = CTRTrainConfig(model="deepfm", hidden=(64,), max_epochs=2, patience=2, progress=False,
                            device="cpu", seed=0, threads=1)
    result = train_ctr(config, frappe_sample, table)
    serving = result.model.embedding
    assert serving.memory_bytes() <= BUDGET_SLACK * serving.budget_bytes()
    assert result.metrics["test_auc"] > 0.7, result.metrics
