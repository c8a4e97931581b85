"""GCN node-feature store: every mode returns exactly table[ids], memmap tables, id validation, the PyG
FeatureStore interface (including the NodeLoader collate path), and async gathers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.loader import NodeLoader
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput

from recsys.gcn.features import MODES, NodeFeatureStore
from sparsekit.errors import InputError, NotFoundError


def _table(num_nodes: int = 50, dim: int = 100, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn((num_nodes, dim), generator=torch.Generator().manual_seed(dim)).to(dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [100, 3])
def test_each_mode_returns_exactly_the_rows(mode: str, dtype: torch.dtype, dim: int) -> None:
    table = _table(dim=dim, dtype=dtype)
    store = NodeFeatureStore(table, mode=mode, device="cpu")
    assert (store.mode, store.num_nodes, store.dim, store.device) == (mode, 50, dim, torch.device("cpu"))
    ids = torch.tensor([49, 0, 7, 7, 23])
    for given in (ids, ids.int(), ids.numpy(), ids.tolist(), ids.to(torch.int16)):
        got = store.gather(given)
        assert got.device.type == "cpu" and got.dtype == dtype
        assert torch.equal(got, table[ids])
    assert store.gather(torch.zeros(0, dtype=torch.int64)).shape == (0, dim)
    assert store.gather([]).shape == (0, dim)


def test_numpy_table_is_wrapped_without_copy() -> None:
    array = _table().numpy()
    store = NodeFeatureStore(array, device="cpu")
    assert store.table.data_ptr() == array.ctypes.data
    np.testing.assert_array_equal(store.gather([3, 1]).numpy(), array[[3, 1]])


def test_memmap_store_reads_the_file(tmp_path: Path) -> None:
    table = _table(64, 100)
    raw = tmp_path / "features.f32"
    table.numpy().tofile(raw)
    store = NodeFeatureStore.from_memmap(raw, (64, 100), dtype="float32", device="cpu")
    assert (store.num_nodes, store.dim) == (64, 100)
    ids = torch.tensor([63, 0, 31, 31])
    for mode in MODES:
        assert torch.equal(NodeFeatureStore.from_memmap(raw, (64, 100), mode=mode, device="cpu").gather(ids),
                           table[ids])
    npy = tmp_path / "features.npy"
    np.save(npy, table.numpy())
    from_npy = NodeFeatureStore(npy, device="cpu")
    assert torch.equal(from_npy.gather(ids), table[ids])
    with pytest.raises(InputError, match="read-only memmap") as info:  # writing would hit a read-only map
        from_npy.put_tensor(torch.zeros(1, 100), group_name=None, attr_name="x", index=torch.tensor([0]))
    assert info.value.source == "x"


def test_non_writeable_array_rows_are_never_written() -> None:
    """A read-only array that is not a memmap (np.frombuffer over bytes) was written through."""
    raw = bytes(48)
    store = NodeFeatureStore(np.frombuffer(raw, dtype=np.float32).reshape(4, 3), device="cpu")
    with pytest.raises(InputError, match="x: is a read-only array table"):
        store.put_tensor(torch.ones(1, 3), group_name=None, attr_name="x", index=torch.tensor([0]))
    assert raw == bytes(48) and torch.equal(store.gather([0]), torch.zeros(1, 3))


def test_memmap_file_errors_name_the_file(tmp_path: Path) -> None:
    raw = tmp_path / "features.f32"
    np.zeros((10, 4), np.float32).tofile(raw)
    with pytest.raises(InputError, match="needs 200") as info:
        NodeFeatureStore.from_memmap(raw, (10, 5), device="cpu")
    assert info.value.source == str(raw)
    with pytest.raises(InputError, match="no such feature file"):
        NodeFeatureStore(tmp_path / "missing.npy", device="cpu")
    with pytest.raises(InputError, match="no such feature file"):
        NodeFeatureStore.from_memmap(tmp_path / "missing.f32", (10, 4), device="cpu")


@pytest.mark.parametrize(("ids", "bad"), [([0, 50, 3], 50), ([2, -1], -1), ([10**12], 10**12)])
def test_out_of_range_ids_name_the_input(ids: list[int], bad: int) -> None:
    store = NodeFeatureStore(_table(), device="cpu")
    with pytest.raises(InputError) as info:
        store.gather(torch.tensor(ids))
    assert info.value.source == "node ids"
    assert f"node id {bad} " in str(info.value) and "50 rows" in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_ids_gather_and_range_check(dtype: type) -> None:
    """Unsigned ids (a common on-disk id type) were refused as 'must be integers'."""
    store = NodeFeatureStore(_table(), device="cpu")
    ids = np.array([49, 0, 7], dtype=dtype)
    assert torch.equal(store.gather(ids), _table()[[49, 0, 7]])
    assert torch.equal(store.gather(torch.from_numpy(ids)), _table()[[49, 0, 7]])
    with pytest.raises(InputError, match="node id 50 out of range"):
        store.gather(np.array([1, 50], dtype=dtype))


@pytest.mark.parametrize("ids", [torch.tensor([0.0, 1.0]), torch.tensor([True]), np.array([0.5]),
                                 torch.tensor([[0, 1]]), ["a", "b"], [object()]])
def test_non_integer_or_non_vector_ids_are_rejected(ids) -> None:
    with pytest.raises(InputError) as info:
        NodeFeatureStore(_table(), device="cpu").gather(ids)
    assert info.value.source == "node ids"


@pytest.mark.parametrize(("table", "mode", "source"), [
    (torch.zeros(5, 2, 2), "zero-copy", "table"),
    (torch.zeros(5, 2, dtype=torch.bool), "zero-copy", "table"),
    (torch.zeros(5, 2), "fast", "mode"),
])
def test_bad_table_or_mode(table: torch.Tensor, mode: str, source: str) -> None:
    with pytest.raises(InputError) as info:
        NodeFeatureStore(table, mode=mode, device="cpu")
    assert info.value.source == source


def test_feature_store_interface_round_trip() -> None:
    table = _table(30, 8)
    store = NodeFeatureStore(table, device="cpu")
    labels = torch.arange(30, dtype=torch.float32).reshape(30, 1)
    assert store.put_tensor(labels, group_name=None, attr_name="y", index=None)
    assert {(a.group_name, a.attr_name) for a in store.get_all_tensor_attrs()} == {(None, "x"), (None, "y")}
    idx = torch.tensor([29, 3, 3])
    assert torch.equal(store.get_tensor(group_name=None, attr_name="y", index=idx), labels[idx])
    assert torch.equal(store[None, "x", idx], table[idx])
    assert torch.equal(store.get_tensor(group_name=None, attr_name="x", index=slice(2, 9, 3)), table[2:9:3])
    assert torch.equal(store.get_tensor(group_name=None, attr_name="x", index=4), table[4])
    assert torch.equal(store.get_tensor(group_name=None, attr_name="x", index=None), table)
    assert store.get_tensor_size(group_name=None, attr_name="y") == (30, 1)
    assert store.get_tensor_size(group_name=None, attr_name="x", index=idx) == (3, 8)
    assert store.get_tensor_size(group_name=None, attr_name="z") is None

    rows = torch.full((2, 8), 7.0)
    assert store.put_tensor(rows, group_name=None, attr_name="x", index=torch.tensor([1, 5]))
    assert torch.equal(store.gather([1, 5, 0]), torch.cat([rows, table[:1]]))
    with pytest.raises(InputError, match="shape"):
        store.put_tensor(torch.zeros(3, 8), group_name=None, attr_name="x", index=torch.tensor([1, 5]))
    with pytest.raises(InputError):
        store.get_tensor(group_name=None, attr_name="y", index=torch.tensor([30]))

    assert store.remove_tensor(group_name=None, attr_name="y", index=None)
    assert not store.remove_tensor(group_name=None, attr_name="y", index=None)
    with pytest.raises(NotFoundError):
        store.get_tensor(group_name=None, attr_name="y", index=idx)


class SuccessorSampler(BaseSampler):
    """A stand-in sampler: each seed plus node ``seed + 1`` (mod 40), one edge from it to the seed."""

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        seeds = index.node
        k = len(seeds)
        return SamplerOutput(node=torch.cat([seeds, (seeds + 1) % 40]), row=torch.arange(k, 2 * k),
                             col=torch.arange(k), edge=None, metadata=(index.input_id, index.time))

    def sample_from_edges(self, index, neg_sampling=None) -> SamplerOutput:
        raise NotImplementedError


def test_node_loader_gathers_every_attribute_at_the_sampled_ids() -> None:
    table = _table(40, 16)
    store = NodeFeatureStore(table, device="cpu")
    store.put_tensor(torch.arange(40), group_name=None, attr_name="y", index=None)  # 1-D labels
    loader = NodeLoader((store, None), SuccessorSampler(), input_nodes=torch.tensor([3, 9, 39]), batch_size=2)
    batches = list(loader)
    assert [b.n_id.tolist() for b in batches] == [[3, 9, 4, 10], [39, 0]]
    for batch in batches:
        assert torch.equal(batch.x, table[batch.n_id]) and torch.equal(batch.y, batch.n_id)


@pytest.mark.parametrize("mode", MODES)
def test_gather_async_wait_equals_gather(mode: str) -> None:
    store = NodeFeatureStore(_table(), mode=mode, device="cpu")
    batches = [torch.randint(0, 50, (20,), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    handles = [store.gather_async(ids) for ids in batches]
    for ids, handle in zip(batches, handles, strict=True):
        assert torch.equal(handle.wait(), store.gather(ids))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim", [100, 3, 256])
def test_cuda_modes_return_exactly_the_rows(mode: str, dim: int) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    table = _table(10_000, dim)
    store = NodeFeatureStore(table, mode=mode, device="cuda")
    assert store.mode == mode and store.device.type == "cuda"
    assert store.table.is_pinned() if mode == "zero-copy" else True
    assert store.table.is_cuda == (mode == "device")
    gen = torch.Generator().manual_seed(dim)
    batches = [torch.randint(0, 10_000, (n,), generator=gen) for n in (4096, 10, 0, 8192, 4096)]
    handles = [store.gather_async(ids) for ids in batches]  # several in flight on the side stream
    for ids, handle in zip(batches, handles, strict=True):
        got = handle.wait()
        assert got.is_cuda and torch.equal(got.cpu(), table[ids])
        assert torch.equal(store.gather(ids.cuda()).cpu(), table[ids])
    with pytest.raises(InputError, match="node id 10000 "):
        store.gather(torch.tensor([10_000], device="cuda"))


@pytest.mark.gpu
def test_cuda_memmap_zero_copy_falls_back_to_cpu_copy(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    table = _table(1000, 100)
    raw = tmp_path / "features.f32"
    table.numpy().tofile(raw)
    with pytest.warns(UserWarning, match="cpu-copy"):
        store = NodeFeatureStore.from_memmap(raw, (1000, 100), mode="zero-copy", device="cuda")
    assert store.mode == "cpu-copy"
    ids = torch.tensor([999, 0, 500, 500])
    assert torch.equal(store.gather_async(ids).wait().cpu(), table[ids])
