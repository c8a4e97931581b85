"""Hashed / compositional embedding bag: the Triton kernel (interpreter on CPU) equals the torch reference."""

from __future__ import annotations

import textwrap

import pytest
import torch

from kernels.embedding_bag import embedding_bag
from kernels.embedding_bag_reference import (
    HASH_PRIME,
    CompositionalLookup,
    HashLookup,
    mixed_radix_rows,
    universal_hash,
)
from sparsekit.errors import InputError

IDS = torch.zeros(2, 2, dtype=torch.int64)
LOOKUPS = {
    "hash": (HashLookup(1_234_567, 89), 37),
    "qr-mult": (CompositionalLookup((40, 26), "mult"), 66),
    "qr-add": (CompositionalLookup((11, 10, 10), "add"), 31),
}

TRITON_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    import triton.language  # imported under TRITON_INTERPRET=1
    from kernels.embedding_bag import embedding_bag
    from kernels.embedding_bag_reference import CompositionalLookup, HashLookup

    lookups = {
        "hash": (HashLookup(1_234_567, 89), 37),
        "qr-mult": (CompositionalLookup((40, 26), "mult"), 66),
        "qr-add": (CompositionalLookup((11, 10, 10), "add"), 31),
        "qr-one": (CompositionalLookup((1000,), "mult"), 1000),
    }
    out = []
    for name, (lookup, rows) in lookups.items():
        for dim in (16, 3, 1):
            gen = torch.Generator().manual_seed(dim)
            for ids_name, ids in (("int64", torch.randint(0, 1000, (9, 5), generator=gen)),
                                  ("int32", torch.randint(0, 1000, (4, 7), generator=gen, dtype=torch.int32)),
                                  ("repeated", torch.tensor([[999, 999, 0], [0, 999, 5]])),
                                  ("empty", torch.zeros(0, 4, dtype=torch.int64))):
                for pool in (False, True):
                    weight = torch.randn(rows, dim, generator=gen, requires_grad=True)
                    got = embedding_bag(weight, ids, lookup, pool, use_triton=True)
                    want = embedding_bag(weight, ids, lookup, pool, use_triton=False)
                    grad = torch.randn(want.shape, generator=gen)
                    g_got = torch.autograd.grad(got, weight, grad, allow_unused=True)[0]
                    g_want = torch.autograd.grad(want, weight, grad, allow_unused=True)[0]
                    zeros = torch.zeros_like(weight)
                    g_got = zeros if g_got is None else g_got
                    g_want = zeros if g_want is None else g_want
                    out.append({"lookup": name, "dim": dim, "ids": ids_name, "pool": pool,
                                "shape": list(got.shape), "want_shape": list(want.shape),
                                "device": str(got.device), "dtype": str(got.dtype),
                                "max_diff": float((got - want).abs().max()) if got.numel() else 0.0,
                                "grad_diff": float((g_got - g_want).abs().max())})
    print(json.dumps(out))
    """
)


def test_triton_kernel_matches_reference_in_interpreter(run_interpreted) -> None:
    results = run_interpreted(TRITON_SCRIPT)
    assert len(results) == 4 * 3 * 4 * 2
    for r in results:
        assert r["device"] == "cpu" and r["dtype"] == "torch.float32", r
        assert r["shape"] == r["want_shape"], r
        # unpooled rows are bit-identical; pooled sums may differ in the last bits (fp32 accumulation order)
        assert r["max_diff"] <= (1e-5 if r["pool"] else 0.0), r
        assert r["grad_diff"] == 0.0, r  # the backward pass is the reference's


def _ids() -> torch.Tensor:
    return torch.tensor([[0, 999, 17, 17], [5, 300, 999, 42], [1, 2, 3, 4]])


@pytest.mark.parametrize("name", sorted(LOOKUPS))
def test_cpu_dispatch_is_the_reference_and_pools_by_summing(name: str) -> None:
    lookup, rows = LOOKUPS[name]
    weight = torch.randn(rows, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = embedding_bag(weight, _ids(), lookup)
    assert out.shape == (3, 4, 6)
    pooled = embedding_bag(weight, _ids(), lookup, pool=True)
    torch.testing.assert_close(pooled, out.sum(dim=1))
    pooled.sum().backward()  # trains through the CPU path
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOOKUPS))
def test_each_call_computes_afresh_after_an_in_place_update(name: str) -> None:
    """Two training steps on the same tensors: the second call sees the updated weights and builds its
    own graph (nothing is cached across calls)."""
    lookup, rows = LOOKUPS[name]
    weight = torch.randn(rows, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ids = _ids()
    first = embedding_bag(weight, ids, lookup, pool=True)
    first.sum().backward()
    with torch.no_grad():
        weight.add_(1.0)
    second = embedding_bag(weight, ids, lookup, pool=True)
    assert second is not first
    fresh = embedding_bag(weight.detach().clone(), ids.clone(), lookup, pool=True)  # new tensors, same values
    torch.testing.assert_close(second.detach(), fresh)
    assert not torch.allclose(second.detach(), first.detach())
    second.sum().backward()  # a fresh graph: no "backward through the graph a second time"


def test_hash_rows_follow_the_universal_hash() -> None:
    lookup, rows = LOOKUPS["hash"]
    weight = torch.arange(rows, dtype=torch.float32).unsqueeze(1)  # row r holds the value r
    ids = torch.arange(5000).reshape(-1, 1)
    got = embedding_bag(weight, ids, lookup).reshape(-1).long()
    want = [((lookup.a * (x % HASH_PRIME) + lookup.b) % HASH_PRIME) % rows for x in range(5000)]
    assert got.tolist() == want
    counts = torch.bincount(got, minlength=rows).float()
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()  # roughly uniform
    assert torch.equal(universal_hash(ids, lookup.a, lookup.b, rows).reshape(-1), got)


def test_compositional_rows_are_unique_per_feature() -> None:
    lookup = CompositionalLookup((7, 5, 3))
    ids = torch.arange(7 * 5 * 3)
    rows = torch.stack(mixed_radix_rows(ids, lookup), dim=1)
    assert torch.unique(rows, dim=0).shape[0] == ids.numel()  # complementary partitions
    assert rows[:, 0].max() < 7 and rows[:, 1].min() >= 7 and rows[:, 2].min() >= 12
    assert rows[22].tolist() == [22 % 7, 7 + (22 // 7) % 5, 12 + 22 // 35]


def test_mult_and_add_combine_partition_rows() -> None:
    weight = torch.randn(9, 4)
    ids = torch.tensor([[13]])  # 13 = 3 + 2 * 5 -> rows 3 and 5 + 2
    mult = embedding_bag(weight, ids, CompositionalLookup((5, 4), "mult"))
    add = embedding_bag(weight, ids, CompositionalLookup((5, 4), "add"))
    assert torch.equal(mult[0, 0], weight[3] * weight[7])
    assert torch.equal(add[0, 0], weight[3] + weight[7])


@pytest.mark.parametrize(
    ("weight", "ids", "lookup", "source"),
    [
        (torch.zeros(5), IDS, HashLookup(3, 1), "weight"),
        (torch.zeros(0, 4), IDS, HashLookup(3, 1), "weight"),
        (torch.zeros(5, 4), torch.zeros(2, 2), HashLookup(3, 1), "ids"),
        (torch.zeros(5, 4), torch.zeros(4, dtype=torch.int64), HashLookup(3, 1), "ids"),
        (torch.zeros(5, 4), torch.tensor([[-3, 1]]), HashLookup(3, 1), "ids"),  # Triton would overread
        (torch.zeros(9, 4), torch.tensor([[2, -1]]), CompositionalLookup((5, 4)), "ids"),
        (torch.zeros(5, 4), IDS, HashLookup(0, 1), "lookup"),
        (torch.zeros(5, 4), IDS, HashLookup(3, HASH_PRIME), "lookup"),
        (torch.zeros(5, 4), IDS, CompositionalLookup((3, 3)), "weight"),
        (torch.zeros(6, 4), IDS, CompositionalLookup((3, 3), "cat"), "lookup"),
        (torch.zeros(6, 4), IDS, CompositionalLookup((6, 0)), "lookup"),
    ],
)
def test_bad_arguments_raise_input_error(weight, ids, lookup, source: str) -> None:
    with pytest.raises(InputError) as info:
        embedding_bag(weight, ids, lookup)
    assert info.value.source == source


def test_forcing_the_kernel_on_float64_weights_is_refused() -> None:
    """The fused kernel adds up in float32: forced on float64 it would quietly lose precision."""
    with pytest.raises(InputError, match=r"^weight: the fused kernel takes float32"):
        embedding_bag(torch.zeros(5, 4, dtype=torch.float64), IDS, HashLookup(3, 1), use_triton=True)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(LOOKUPS))
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("use_triton", [True, None])  # forced kernel; dispatcher (torch when training)
def test_cuda_kernel_matches_cpu_forward_and_backward(name: str, pool: bool, use_triton: bool | None) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    lookup, rows = LOOKUPS[name]
    gen = torch.Generator().manual_seed(3)
    for dim in (16, 3, 64):
        cpu_weight = torch.randn(rows, dim, generator=gen, dtype=torch.float64, requires_grad=True)
        gpu_weight = cpu_weight.detach().float().cuda().requires_grad_()
        ids = torch.randint(0, 100_000, (4096, 10), generator=gen)
        want = embedding_bag(cpu_weight, ids, lookup, pool)  # float64 ground truth
        got = embedding_bag(gpu_weight, ids.cuda(), lookup, pool, use_triton=use_triton)
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)
        grad = torch.randn(want.shape, generator=gen, dtype=torch.float64)
        want.backward(grad)
        got.backward(grad.float().cuda())
        # each of the few rows sums thousands of O(1) float32 terms: their rounding error in any order is
        # ~1e-4 (3.7e-4 seen between two float32 orders on an H200), a lost or doubled term moves it by ~1
        torch.testing.assert_close(gpu_weight.grad.cpu().double(), cpu_weight.grad, rtol=1e-5, atol=2e-3)


@pytest.mark.gpu
def test_dispatcher_uses_the_kernel_for_inference_and_torch_for_training(monkeypatch) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    import kernels.embedding_bag as dispatch

    calls = []
    real = dispatch._triton
    monkeypatch.setattr(dispatch, "_triton", lambda *args: calls.append(1) or real(*args))
    lookup, rows = LOOKUPS["hash"]
    weight = torch.randn(rows, 8, device="cuda", requires_grad=True)
    ids = torch.randint(0, 1000, (16, 3))  # host ids: moved to the weight's device
    with torch.no_grad():
        embedding_bag(weight, ids, lookup)
    assert calls == [1]
    embedding_bag(weight, ids, lookup).sum().backward()
    assert calls == [1] and weight.grad is not None
