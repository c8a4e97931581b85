"""Dynamic Sparse Learning (DSL): constant budget through prune/regrow, masked weights and optimizer
state, the prune-fraction schedule, and the sparse export serving exactly what the masked model scores."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.dsl import DSLConfig, DynamicSparsity, prune_fraction, prune_regrow, random_mask
from recsys.models.cf import CFModel, Recommender
from recsys.models.lightgcn import LightGCN
from recsys.models.mf import MF
from recsys.models.neumf import NeuMF
from recsys.sparse_export import CSRTable, export_sparse, index_dtype, load_sparse
from sparsekit.errors import InputError, NotFoundError

NUM_USERS, NUM_ITEMS = 30, 50


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensor ops: one thread


def _interactions(seed: int = 0) -> sp.csr_matrix:
    return sp.random(NUM_USERS, NUM_ITEMS, density=0.15, format="csr", random_state=seed,
                     data_rvs=np.ones).astype(np.float32)


def _batch(seed: int, size: int = 64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, NUM_USERS, (size,), generator=g)
    return users, *(torch.randint(0, NUM_ITEMS, (size,), generator=g) for _ in range(2))


def _train_sparse(model: CFModel, steps: int, delta_t: int = 3, dynamic: bool = True) -> DynamicSparsity:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    dsl = DynamicSparsity(model.sparse_parameters(), optimizer,
                          DSLConfig(density=0.2, total_steps=steps, delta_t=delta_t, dynamic=dynamic, seed=1))
    for step in range(steps):
        loss, _ = model.bpr_loss(*_batch(step), weight_decay=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        dsl.step()
    return dsl


def _models() -> list[CFModel]:
    torch.manual_seed(0)
    inter = _interactions()
    return [MF(NUM_USERS, NUM_ITEMS, dim=8, interactions=inter),
            LightGCN(NUM_USERS, NUM_ITEMS, dim=8, layers=2, interactions=inter),
            NeuMF(NUM_USERS, NUM_ITEMS, dim=8, layers=2, interactions=inter)]


# ---- masks and the schedule ---------------------------------------------------------------------------


def test_prune_fraction_schedule_endpoints_and_shape() -> None:
    assert prune_fraction(0, 100) == pytest.approx(0.5)
    assert prune_fraction(100, 100) == pytest.approx(0.005)
    assert prune_fraction(50, 100) == pytest.approx((0.5 + 0.005) / 2)
    assert prune_fraction(1000, 100) == pytest.approx(0.005)
    values = [prune_fraction(t, 100) for t in range(101)]
    assert all(a >= b for a, b in pairwise(values))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 20), st.floats(0.01, 1.0), st.integers(0, 1000))
def test_random_mask_has_the_exact_budget(rows: int, cols: int, density: float, seed: int) -> None:
    mask = random_mask((rows, cols), density, torch.Generator().manual_seed(seed))
    # density * (rows * cols), as documented: (density * rows) * cols rounds another way at .5 (0.02, 35, 15)
    assert int(mask.sum()) == max(1, round(density * (rows * cols)))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(1, 12), st.floats(0.05, 0.9), st.floats(0.0, 1.0),
       st.integers(0, 1000))
def test_prune_regrow_keeps_the_active_count(rows: int, cols: int, density: float, fraction: float,
                                             seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = random_mask((rows, cols), density, g)
    weight = torch.randn(rows, cols, generator=g) * mask
    grad = torch.randn(rows, cols, generator=g)
    new = prune_regrow(weight, grad, mask, fraction)
    assert int(new.sum()) == int(mask.sum())
    count = round(fraction * int(mask.sum()))
    if count:  # active weights larger than the count-th smallest all survive
        threshold = torch.kthvalue(weight.abs()[mask], count).values
        assert bool(new[mask & (weight.abs() > threshold)].all())


def test_prune_regrow_drops_small_weights_and_grows_large_gradients() -> None:
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    weight = torch.tensor([0.1, -5.0, 3.0, -0.2, 0.0, 0.0, 0.0, 0.0])
    grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, -9.0, 0.3, 7.0])
    new = prune_regrow(weight, grad, mask, 0.5)
    assert new.tolist() == [False, True, True, False, False, True, False, True]


@pytest.mark.parametrize("model_index", [0, 1, 2], ids=["mf", "lightgcn", "neumf"])
def test_dsl_keeps_the_budget_and_zeroes_masked_weights_and_adam_state(model_index: int) -> None:
    model = _models()[model_index]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    dsl = DynamicSparsity(model.sparse_parameters(), optimizer,
                          DSLConfig(density=0.2, total_steps=12, delta_t=3, seed=1))
    budget = dsl.active_counts()
    changed = 0
    for step in range(12):
        loss, _ = model.bpr_loss(*_batch(step), weight_decay=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        before = {n: m.clone() for n, m in dsl.masks.items()}
        if dsl.step():
            changed += sum(int((before[n] != dsl.masks[n]).any()) for n in before)
            for name, param in model.sparse_parameters().items():  # regrown entries restart at 0
                grown = dsl.masks[name] & ~before[name]
                assert bool((param[grown] == 0).all())
                assert all(bool((s[grown] == 0).all()) for s in dsl._state_tensors(param))
        assert dsl.active_counts() == budget
        for name, param in model.sparse_parameters().items():
            off = ~dsl.masks[name]
            assert bool((param[off] == 0).all())
            state = optimizer.state[param]
            assert bool((state["exp_avg"][off] == 0).all()) and bool((state["exp_avg_sq"][off] == 0).all())
    assert changed > 0
    for name, count in budget.items():
        assert count == round(0.2 * model.sparse_parameters()[name].numel())


def test_regrowth_scores_accumulate_the_gradients_of_the_window() -> None:
    model = _models()[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    dsl = DynamicSparsity(model.sparse_parameters(), optimizer,
                          DSLConfig(density=0.2, total_steps=100, delta_t=4, seed=1))
    window = {name: torch.zeros_like(p) for name, p in model.sparse_parameters().items()}
    for step in range(3):
        loss, _ = model.bpr_loss(*_batch(step), weight_decay=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for name, param in model.sparse_parameters().items():
            window[name] += param.grad
        assert not dsl.step()
    for name, total in window.items():
        torch.testing.assert_close(dsl._grad_sums[name], total)
    loss, _ = model.bpr_loss(*_batch(3), weight_decay=1e-4)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert dsl.step()  # step 4: masks updated, window restarts
    assert all(bool((g == 0).all()) for g in dsl._grad_sums.values())


def test_last_batch_gradient_mode_keeps_the_budget() -> None:
    model = _models()[1]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    dsl = DynamicSparsity(model.sparse_parameters(), optimizer,
                          DSLConfig(density=0.2, total_steps=8, delta_t=2, accumulate_grad=False, seed=1))
    budget, first = dsl.active_counts(), {n: m.clone() for n, m in dsl.masks.items()}
    for step in range(6):
        loss, _ = model.bpr_loss(*_batch(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        dsl.step()
        assert dsl.active_counts() == budget
    assert not dsl._grad_sums
    assert any(not torch.equal(first[n], dsl.masks[n]) for n in first)


def test_static_sparsity_never_changes_its_masks() -> None:
    model = _models()[0]
    dsl = _train_sparse(model, steps=9, dynamic=False)
    generator = torch.Generator().manual_seed(1)
    for name, param in model.sparse_parameters().items():
        assert torch.equal(dsl.masks[name], random_mask(param.shape, 0.2, generator))


def test_dsl_state_round_trip() -> None:
    model = _models()[0]
    dsl = _train_sparse(model, steps=7)
    other = DynamicSparsity(model.sparse_parameters(), None, DSLConfig(density=0.2, total_steps=7, seed=99))
    other.load_state_dict(dsl.state_dict())
    assert other.steps == 7
    assert all(torch.equal(other.masks[n], dsl.masks[n]) for n in dsl.masks)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(InputError, match="density"):
        DSLConfig(density=0.0, total_steps=10)
    with pytest.raises(InputError, match="delta_t"):
        DSLConfig(density=0.5, total_steps=10, delta_t=0)


# ---- sparse export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_index", [0, 1, 2], ids=["mf", "lightgcn", "neumf"])
def test_sparse_export_scores_equal_the_masked_model(tmp_path: Path, model_index: int) -> None:
    model = _models()[model_index]
    _train_sparse(model, steps=9)
    model.eval()
    manifest = export_sparse(model, tmp_path / "sparse")
    served = load_sparse(tmp_path / "sparse", device="cpu")
    users = torch.arange(NUM_USERS)
    with torch.no_grad():
        want = model.score_all(users)
    torch.testing.assert_close(served.score(users), want, rtol=1e-5, atol=1e-5)
    dense_items, dense_scores = Recommender.from_model(model).recommend(np.arange(NUM_USERS), k=5)
    items, scores = served.recommend(np.arange(NUM_USERS), k=5)
    np.testing.assert_allclose(scores, dense_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(items, dense_items)
    assert manifest.counts["stored_bytes"] < manifest.counts["dense_bytes"]


def test_stored_bytes_count_values_and_index_overhead(tmp_path: Path) -> None:
    model = _models()[0]
    dsl = _train_sparse(model, steps=6)
    manifest = export_sparse(model, tmp_path / "sparse")
    nnz = {n: manifest.counts[f"nnz.{n}"] for n in dsl.masks}
    assert all(nnz[n] <= c for n, c in dsl.active_counts().items())  # a regrown weight may still be 0
    indptr = 4 * (NUM_USERS + 1 + NUM_ITEMS + 1)
    assert manifest.counts["stored_bytes"] == indptr + sum(nnz.values()) * (4 + 1)  # float32 + uint8 index
    assert manifest.counts["dense_bytes"] == 4 * 8 * (NUM_USERS + NUM_ITEMS)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "sparse").glob("*_emb.*.npy"))
    assert on_disk >= manifest.counts["stored_bytes"]  # .npy headers on top


def test_index_dtype_is_the_smallest_that_fits() -> None:
    assert index_dtype(64) == np.uint8
    assert index_dtype(256) == np.uint8
    assert index_dtype(257) == np.int16
    assert index_dtype(32768) == np.int16
    assert index_dtype(40981) == np.int32


def test_csr_table_rows_expand_exactly() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(20, 7)).astype(np.float32) * (rng.random((20, 7)) < 0.3)
    table = CSRTable.from_dense(dense)
    np.testing.assert_array_equal(table.to_dense(), dense)
    ids = np.array([5, 0, 5, 19])
    np.testing.assert_array_equal(table.rows(ids), dense[ids])


def test_serving_excludes_seen_items_and_rejects_unknown_users(tmp_path: Path) -> None:
    model = _models()[0]
    _train_sparse(model, steps=3)
    export_sparse(model, tmp_path / "sparse")
    served = load_sparse(tmp_path / "sparse", device="cpu")
    items, _ = served.recommend(np.arange(NUM_USERS), k=10, exclude_seen=True)
    seen = model.interactions.tolil().rows
    assert all(not set(items[u]) & set(seen[u]) for u in range(NUM_USERS))
    with pytest.raises(NotFoundError, match=str(NUM_USERS + 3)):
        served.recommend(np.array([1, NUM_USERS + 3]), k=5)
    with pytest.raises(NotFoundError, match="-1"):
        Recommender.from_model(model).recommend([-1], k=5)
    with pytest.raises(InputError, match="k"):
        served.recommend([0], k=0)
