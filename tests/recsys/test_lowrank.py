"""Atomic Feature Mimicking (low-rank CTR compression).

At full rank the compressed model reproduces the original outputs (float64, 1e-5), whatever is
compressed and folded; at rank k each layer's parameter count is the one computed by hand; outputs
confined to a subspace are reproduced exactly at that subspace's rank (chosen by energy); compressed
models save and load back to identical outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from embeddings.full import FullTable
from embeddings.table import BudgetError, FieldwiseTable
from recsys.data.ctr import CTRField, CTRSchema
from recsys.lowrank import (
    CodeInput,
    LowRankLinear,
    LowRankTable,
    affected_layers,
    calibrate,
    compress,
    default_targets,
    parameter_count,
)
from recsys.models.ctr.dcnv2 import DCNv2
from recsys.models.ctr.deepfm import DeepFM
from recsys.models.ctr.dlrm import DLRM
from recsys.models.ctr.wdl import WideDeep
from recsys.training.ctr import load_ctr_model, save_ctr_model
from sparsekit.errors import InputError

FIELDS = [5, 7, 4]
DIM = 6
MODELS = [DeepFM, DCNv2, WideDeep, DLRM]


def _ids(batch: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, 5, 12])
    return torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in FIELDS], 1) + offsets


def _model(cls, table=None) -> nn.Module:
    torch.manual_seed(0)
    table = table or FullTable(sum(FIELDS), DIM, field_dims=FIELDS, init_std=0.3)
    model = cls(table, len(FIELDS), hidden=(20, 10)).double()
    return model.eval()


def _calib() -> list[torch.Tensor]:
    return [_ids(64, seed) for seed in range(4)]


@pytest.mark.parametrize("cls", MODELS)
def test_full_rank_reproduces_outputs(cls) -> None:
    model = _model(cls)
    targets = [*default_targets(model), "embedding"]
    low = compress(model, _calib(), rank=10_000, targets=targets)
    ids = _ids(50, seed=9)
    assert torch.allclose(low(ids), model(ids), atol=1e-5, rtol=0)
    assert all(low.lowrank_spec[t]["rank"] > 0 for t in targets)
    assert isinstance(low.embedding, LowRankTable) and low.embedding.rank == DIM
    assert type(model.embedding) is FullTable  # the original is untouched


def test_default_targets_skip_logit_layers() -> None:
    assert default_targets(_model(DeepFM)) == ["deep.0", "deep.2"]
    assert default_targets(_model(DCNv2)) == [
        "cross.0.linear",
        "cross.1.linear",
        "cross.2.linear",
        "deep.0",
        "deep.2",
    ]


def test_rank_k_parameter_counts() -> None:
    model = _model(DCNv2)
    k = 3
    low = compress(model, _calib(), rank=k)
    d_in = len(FIELDS) * DIM
    assert isinstance(low.deep[0], LowRankLinear) and isinstance(low.cross[1].linear, LowRankLinear)
    assert parameter_count(model, ["deep.0"]) == d_in * 20 + 20
    assert parameter_count(low, ["deep.0"]) == k * (d_in + 1) + 20 * (k + 1)
    assert parameter_count(low, ["cross.0.linear"]) == k * (d_in + 1) + d_in * (k + 1)
    layers = affected_layers(low.lowrank_spec)
    before = 3 * (d_in * d_in + d_in) + (d_in * 20 + 20) + (20 * 10 + 10)
    after = 3 * (k * (d_in + 1) + d_in * (k + 1)) + (k * (d_in + 1) + 20 * (k + 1)) + (k * 21 + 10 * (k + 1))
    assert parameter_count(model, layers) == before and parameter_count(low, layers) == after


def test_embedding_fold_into_the_first_fc_layer() -> None:
    model = _model(DeepFM)
    k = 2
    low = compress(model, _calib(), rank=k, targets=["embedding"])
    spec = low.lowrank_spec["embedding"]
    assert spec["folded_into"] == "deep.0" and isinstance(low.deep_input, CodeInput)
    assert low.deep[0].in_features == len(FIELDS) * k  # the tower reads the k-dim codes
    table = low.embedding
    assert table.weight.shape == (sum(FIELDS), k) and table.basis.shape == (len(FIELDS), DIM, k)
    assert table.memory_bytes() == (sum(FIELDS) * k + len(FIELDS) * (DIM * k + DIM)) * 8 + 3 * 8
    # folding is exact: the folded tower equals the unfolded tower on the projected-back vectors
    unfolded = compress(model, _calib(), rank=k, targets=["embedding"], fold=False)
    assert isinstance(unfolded.deep_input, type(model.deep_input))
    ids = _ids(30, seed=5)
    assert torch.allclose(low(ids), unfolded(ids), atol=1e-10)
    assert parameter_count(low, ["deep.0"]) == 20 * len(FIELDS) * k + 20


def test_dlrm_embedding_is_not_folded() -> None:
    low = compress(_model(DLRM), _calib(), rank=2, targets=["embedding"])
    assert low.lowrank_spec["embedding"]["folded_into"] is None


def test_fold_into_a_directly_following_linear() -> None:
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1))
        .double()
        .eval()
    )
    batches = [torch.randn(40, 6, dtype=torch.float64) for _ in range(3)]
    low = compress(model, batches, rank=8, targets=["0"])
    assert low.lowrank_spec["0"]["folded_into"] == "2"
    assert type(low[0]) is nn.Linear and low[0].out_features == 8 and low[2].in_features == 8
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(low(x), model(x), atol=1e-10)
    small = compress(model, batches, rank=2, targets=["0"])
    assert parameter_count(small, ["0", "2"]) == (6 * 2 + 2) + (3 * 2 + 3)
    assert affected_layers(small.lowrank_spec) == ["0", "2"]
    assert (
        compress(model, batches, rank=2, targets=["2"]).lowrank_spec["2"]["folded_into"] is None
    )  # ReLU next


def test_energy_finds_the_rank_of_a_subspace() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(12, 10).double()
    with torch.no_grad():  # outputs live in a 3-dim affine subspace
        layer.weight.copy_(torch.randn(10, 3, dtype=torch.float64) @ torch.randn(3, 12, dtype=torch.float64))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(10, 1)).double().eval()
    batches = [torch.randn(100, 12, dtype=torch.float64) for _ in range(2)]
    calibration = calibrate(model, batches, ["0"])
    assert calibration.rows == 200
    low = compress(model, calibration, energy=0.9999)
    assert low.lowrank_spec["0"]["rank"] == 3
    x = torch.randn(7, 12, dtype=torch.float64)
    assert torch.allclose(low(x), model(x), atol=1e-8)
    assert compress(model, calibration, energy=0.5).lowrank_spec["0"]["rank"] < 3


def test_rank_chooses_the_top_variance_directions() -> None:
    model = _model(WideDeep)
    calibration = calibrate(model, _calib(), ["deep.0"])
    stats = calibration.stats["deep.0"]
    with torch.no_grad():
        outputs = torch.cat([model.deep[0](model.embedding(b).flatten(1)) for b in _calib()])
    cov = torch.cov(outputs.T, correction=0)
    assert torch.allclose(stats.mean[0], outputs.mean(0)) and torch.allclose(
        stats.covariance[0], cov, atol=1e-12
    )
    u = stats.basis(4)[0]
    captured = float(torch.trace(u.T @ cov @ u))
    assert captured == pytest.approx(float(torch.linalg.eigvalsh(cov).flip(0)[:4].sum()))


def test_bad_arguments() -> None:
    model = _model(DeepFM)
    with pytest.raises(InputError):
        compress(model, _calib(), rank=2, energy=0.9)
    with pytest.raises(InputError):
        compress(model, _calib())
    with pytest.raises(InputError) as info:
        compress(model, _calib(), rank=2, targets=["deep.1"])  # a ReLU
    assert info.value.source == "targets"
    with pytest.raises(InputError):
        compress(model, [], rank=2)
    with pytest.raises(InputError):
        compress(model, _calib(), energy=1.5)


def test_a_table_read_through_lookup_is_named_not_a_key_error() -> None:
    """DeepFM reads its first-order table with lookup(), so no forward hook sees it during calibration."""
    with pytest.raises(InputError, match="first_order produced no output") as info:
        calibrate(_model(DeepFM), _calib(), ["first_order"])
    assert info.value.source == "targets"


def test_a_served_table_without_parameters_can_be_compressed() -> None:
    """Served INT8 tables store only buffers: the low-rank table takes float32, not a parameter's dtype."""
    table = FieldwiseTable(sum(FIELDS), DIM, 0.5, field_dims=FIELDS, table="int8").finalize()
    model = _model(DeepFM, table).float()
    low = compress(model, _calib(), rank=DIM, targets=["embedding"])
    ids = _ids(20, seed=3)
    assert torch.allclose(low(ids), model(ids), atol=1e-4)


def test_low_rank_lookup_of_ids_not_laid_out_by_field() -> None:
    """A [B, F]-shaped tensor whose columns are not the fields still reads each id's own field basis."""
    low = compress(_model(DeepFM), _calib(), rank=3, targets=["embedding"]).embedding
    ids = torch.tensor([[0, 1, 2], [5, 12, 6]])  # columns mix fields
    assert torch.allclose(low.lookup(ids), low.lookup(ids.flatten()).reshape(2, 3, DIM))


def test_fieldwise_table_can_be_compressed() -> None:
    model = _model(DeepFM, FieldwiseTable(sum(FIELDS), DIM, field_dims=FIELDS).double())
    low = compress(model, _calib(), rank=DIM, targets=["embedding"])
    ids = _ids(20, seed=3)
    assert torch.allclose(low(ids), model(ids), atol=1e-5)


@pytest.mark.parametrize("cls", [DeepFM, DCNv2])
def test_compressed_model_round_trips(tmp_path: Path, cls) -> None:
    model = _model(cls).float()
    low = compress(model, [b for b in _calib()], rank=3, targets=[*default_targets(model), "embedding"])
    schema = CTRSchema(tuple(CTRField(f"f{i}", n) for i, n in enumerate(FIELDS)))
    path = save_ctr_model(low, tmp_path / "low", schema=schema)
    loaded = load_ctr_model(path)
    ids = _ids(30, seed=4)
    assert torch.equal(loaded.model(ids), low(ids))
    assert loaded.model.lowrank_spec == low.lowrank_spec
    assert loaded.schema.encode([[4, 0, 3]]).tolist() == [[4, 5, 15]]
    assert np.isclose(
        sum(p.numel() for p in loaded.model.parameters()), sum(p.numel() for p in low.parameters())
    )


def test_a_projected_first_order_model_compresses_and_round_trips(tmp_path: Path) -> None:
    """wide="projected" reads the embeddings for its first-order logit too: compressing the embedding
    must keep that path (exact at full rank) and the artifact must bring the mode back."""
    torch.manual_seed(0)
    table = FullTable(sum(FIELDS), DIM, field_dims=FIELDS, init_std=0.3)
    model = DeepFM(table, len(FIELDS), hidden=(20, 10), wide="projected").eval()
    with torch.no_grad():
        model.wide_projection.normal_()
    ids = _ids(40, seed=5)
    exact = compress(model, _calib(), rank=10_000, targets=[*default_targets(model), "embedding"])
    assert torch.allclose(exact(ids), model(ids), atol=1e-4, rtol=0)
    low = compress(model, _calib(), rank=3, targets=[*default_targets(model), "embedding"])
    loaded = load_ctr_model(save_ctr_model(low, tmp_path / "low")).model
    assert loaded.first_order is None and torch.equal(loaded.wide_projection, low.wide_projection)
    assert torch.equal(loaded(ids), low(ids))


def test_default_rank_meets_the_budget_or_says_it_cannot() -> None:
    """The largest rank whose codes, bases, means and field offsets fit; BudgetError below rank 1."""
    fields = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]  # Frappe's layout, dim 16
    table = LowRankTable(sum(fields), 16, 0.1, field_dims=fields)
    assert table.rank == 1 and table.memory_bytes() <= table.budget_bytes()
    assert LowRankTable(sum(fields), 16, 0.5, field_dims=fields).rank == 7
    with pytest.raises(BudgetError, match="afm-lowrank"):
        LowRankTable(sum(fields), 16, 0.01, field_dims=fields)  # 3,444 bytes: not even rank-1 codes
