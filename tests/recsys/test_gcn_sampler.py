"""The CSR neighbor sampler behind PyG's BaseSampler: sampled edges exist, fan-outs hold per hop with no
repeated neighbour, all neighbours are taken below the fanout, runs are seeded, ``NodeLoader`` turns the
output into standard PyG mini-batches that stock layers consume, and bad ids raise InputError.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations, pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.sampler import EdgeSamplerInput, NodeSamplerInput, SamplerOutput

from recsys.data.planetoid import load_planetoid
from recsys.gcn.sampler import CSRGraph, NeighborSampler, floyd_sample
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError


def _random_data(num_nodes: int = 60, num_edges: int = 400, seed: int = 0) -> Data:
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    return Data(
        x=torch.randn(num_nodes, 8, generator=gen),
        edge_index=edge_index,
        edge_attr=torch.arange(num_edges, dtype=torch.float32),
        num_nodes=num_nodes,
    )


def _hop_ranges(counts: list[int]) -> list[tuple[int, int]]:
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return list(pairwise(bounds))


def _check_sample(out: SamplerOutput, edge_index: torch.Tensor, num_nodes: int, seeds: list[int],
                  fanouts: list[int], perm: torch.Tensor | None) -> None:
    """Every invariant of one sampled subgraph against the full graph ``edge_index``."""
    node = out.node.tolist()
    assert node[: len(seeds)] == seeds
    assert len(set(node)) == len(node)
    assert sum(out.num_sampled_nodes) == len(node)
    assert sum(out.num_sampled_edges) == out.row.numel() == out.col.numel() == out.edge.numel()
    edge_ids = perm[out.edge] if perm is not None else out.edge
    src, dst = out.node[out.row], out.node[out.col]
    assert torch.equal(edge_index[:, edge_ids], torch.stack([src, dst]))  # every sampled edge exists
    in_degree = torch.bincount(edge_index[1], minlength=num_nodes)
    node_hops = _hop_ranges(out.num_sampled_nodes)
    for hop, ((e0, e1), fanout) in enumerate(zip(_hop_ranges(out.num_sampled_edges), fanouts, strict=True)):
        f0, f1 = node_hops[hop]
        col, row, eid = out.col[e0:e1], out.row[e0:e1], edge_ids[e0:e1]
        assert bool(((col >= f0) & (col < f1)).all())  # only the previous hop's new nodes are expanded
        for local in range(f0, f1):
            mine = col == local
            degree = int(in_degree[node[local]])
            assert int(mine.sum()) == (degree if fanout == -1 else min(degree, fanout))
            assert len(set(eid[mine].tolist())) == int(mine.sum())
            assert len(set(out.node[row[mine]].tolist())) == int(mine.sum())  # no duplicate neighbour
        known, first_seen = set(node[:f1]), []
        for u in out.node[row].tolist():
            if u not in known:
                known.add(u)
                first_seen.append(u)
        n0, n1 = node_hops[hop + 1]
        assert node[n0:n1] == first_seen  # new nodes appended in first-seen order


@st.composite
def _graphs(draw: st.DrawFn) -> tuple[torch.Tensor, int, list[int], list[int], int]:
    """A random simple directed graph (density anywhere in [0, 1], some nodes without in-edges, edges in
    shuffled order), distinct seed nodes, fanouts and a sampler seed."""
    num_nodes = draw(st.integers(1, 30))
    node_ids = st.integers(0, num_nodes - 1)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    adjacency = torch.rand(num_nodes, num_nodes, generator=gen) < draw(st.floats(0.0, 1.0))
    adjacency[:, sorted(draw(st.sets(node_ids)))] = False  # isolated (in-degree 0) nodes
    edge_index = adjacency.nonzero().t()
    edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=gen)]
    seeds = draw(st.lists(node_ids, min_size=1, max_size=num_nodes, unique=True))
    fanouts = draw(st.lists(st.sampled_from([1, 2, 3, 5, 8, -1]), min_size=1, max_size=3))
    return edge_index, num_nodes, seeds, fanouts, draw(st.integers(0, 2**31))


@settings(max_examples=80, deadline=None)
@given(_graphs())
def test_sampling_invariants_on_random_graphs(case: tuple) -> None:
    edge_index, num_nodes, seeds, fanouts, seed = case
    data = Data(edge_index=edge_index, num_nodes=num_nodes)
    first = NeighborSampler(data, fanouts, seed=seed)
    out = first.sample(torch.tensor(seeds))
    _check_sample(out, edge_index, num_nodes, seeds, fanouts, first.edge_permutation)
    again = NeighborSampler(data, fanouts, seed=seed).sample(torch.tensor(seeds))
    for field in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(out, field), getattr(again, field))
    assert out.num_sampled_nodes == again.num_sampled_nodes


def test_degree_zero_and_small_degree_nodes_take_all_neighbours() -> None:
    # node 0 has no in-edges, node 1 has two (< fanout 3), node 2 has five (> fanout 3)
    edge_index = torch.tensor([[3, 4, 0, 1, 3, 4, 5, 6], [1, 1, 2, 2, 2, 2, 2, 2]])
    sampler = NeighborSampler(Data(edge_index=edge_index, num_nodes=7), [3], seed=1)
    out = sampler.sample(torch.tensor([0, 1, 2]))
    per_seed = Counter(out.col.tolist())
    assert per_seed == {1: 2, 2: 3}
    assert sorted(out.node[out.row[out.col == 1]].tolist()) == [3, 4]


def test_fanout_far_above_every_degree_costs_what_taking_all_costs() -> None:
    """Memory scaled with nodes x fanout: a fanout of 2**40 on a tiny graph asked for terabytes."""
    data = _random_data()
    huge = NeighborSampler(data, [2**40, 2**40], seed=0).sample(torch.tensor([5, 7]))
    every = NeighborSampler(data, [-1, -1], seed=0).sample(torch.tensor([5, 7]))
    for field in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(huge, field), getattr(every, field))


def test_fanout_minus_one_takes_every_in_edge() -> None:
    data = _random_data()
    out = NeighborSampler(data, [-1], seed=0).sample(torch.tensor([5, 7]))
    expected = int(((data.edge_index[1] == 5) | (data.edge_index[1] == 7)).sum())
    assert out.row.numel() == expected


def test_floyd_sample_draws_every_subset_uniformly() -> None:
    draws = floyd_sample(torch.full((30_000,), 6), 2, torch.Generator().manual_seed(0))
    assert bool((draws[:, 0] != draws[:, 1]).all()) and int(draws.min()) >= 0 and int(draws.max()) <= 5
    pairs = Counter(tuple(sorted(p)) for p in draws.tolist())
    assert set(pairs) == set(combinations(range(6), 2))
    freq = np.array(list(pairs.values())) / 30_000
    assert np.abs(freq - 1 / 15).max() < 0.006  # ~4 standard deviations


def test_different_seeds_give_different_samples() -> None:
    data = _random_data(num_nodes=100, num_edges=2000)
    seeds = torch.arange(20)
    a = NeighborSampler(data, [4, 2], seed=0).sample(seeds)
    b = NeighborSampler(data, [4, 2], seed=1).sample(seeds)
    assert not torch.equal(a.edge, b.edge)


def test_node_loader_yields_standard_pyg_batches() -> None:
    data = _random_data()
    input_nodes = torch.arange(10, 50)
    sampler = NeighborSampler(data, [5, 3], seed=0)
    loader = NodeLoader(data, node_sampler=sampler, input_nodes=input_nodes, batch_size=16, shuffle=True)
    conv, gcn = SAGEConv(8, 4), GCNConv(8, 4)
    seen = []
    for batch in loader:
        n = batch.num_nodes
        assert batch.n_id.numel() == n and batch.x.shape == (n, 8)
        assert torch.equal(batch.x, data.x[batch.n_id])
        assert int(batch.edge_index.max()) < n
        assert torch.equal(batch.n_id[: batch.batch_size], input_nodes[batch.input_id])
        assert torch.equal(data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
        assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])
        assert conv(batch.x, batch.edge_index).shape == (n, 4)
        assert gcn(batch.x, batch.edge_index).shape == (n, 4)
        seen += batch.n_id[: batch.batch_size].tolist()
    assert sorted(seen) == input_nodes.tolist()


def test_node_loader_over_a_csr_graph_and_memmap_features(tmp_path) -> None:
    data = _random_data()
    features = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(60, 8))
    features[:] = data.x.numpy()
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    shell = graph.loader_data(x=np.load(tmp_path / "x.npy", mmap_mode="r"))
    loader = NodeLoader(shell, node_sampler=NeighborSampler(graph, [4, 2]), batch_size=32)
    batch = next(iter(loader))
    assert torch.equal(batch.x, data.x[batch.n_id])
    assert torch.equal(data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
    assert SAGEConv(8, 3)(batch.x, batch.edge_index).shape == (batch.num_nodes, 3)


def test_node_loader_with_a_worker_process_is_valid_and_reproducible() -> None:
    data = _random_data()

    def run() -> list[Data]:
        torch.manual_seed(0)
        loader = NodeLoader(data, node_sampler=NeighborSampler(data, [3, 2], seed=4), batch_size=20,
                            shuffle=True, num_workers=1)
        return list(loader)

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(data.edge_index[:, a.e_id], a.n_id[a.edge_index])
        assert torch.equal(a.e_id, b.e_id) and torch.equal(a.n_id, b.n_id)


def test_csr_graph_groups_in_edges_by_destination() -> None:
    edge_index = torch.tensor([[0, 2, 1, 0], [1, 0, 1, 2]])
    graph = CSRGraph.from_edge_index(edge_index, 3)
    assert graph.indptr.tolist() == [0, 1, 3, 4]
    assert graph.indices.tolist() == [2, 0, 1, 0] and graph.indices.dtype == torch.int32
    assert graph.perm.tolist() == [1, 0, 2, 3]
    assert graph.in_degree().tolist() == [1, 2, 1]


@pytest.mark.parametrize(
    ("seeds", "match"),
    [
        (torch.tensor([0, 60]), r"input_nodes: node id 60 out of range \[0, 60\)"),
        (torch.tensor([-1, 3]), r"input_nodes: node id -1 out of range"),
        (torch.tensor([3, 3]), r"input_nodes: .*distinct"),
        (torch.tensor([0.0, 1.0]), r"input_nodes: .*int32/int64"),
    ],
)
def test_bad_seed_nodes_raise_input_error(seeds: torch.Tensor, match: str) -> None:
    sampler = NeighborSampler(_random_data(), [2])
    with pytest.raises(InputError, match=match) as info:
        sampler.sample(seeds)
    assert info.value.source == "input_nodes"


def test_out_of_range_seed_through_node_loader_names_the_input() -> None:
    data = _random_data()
    loader = NodeLoader(data, node_sampler=NeighborSampler(data, [2]), input_nodes=torch.tensor([1, 99]),
                        batch_size=2)
    with pytest.raises(InputError, match="input_nodes: node id 99 out of range"):
        next(iter(loader))


@pytest.mark.parametrize("bad", [[[0, 1], [2, 5]], [[0, -2], [1, 1]]])
def test_out_of_range_edge_index_raises_input_error(bad: list) -> None:
    data = Data(edge_index=torch.tensor(bad), num_nodes=5)
    with pytest.raises(InputError, match=r"edge_index: node id -?\d+ out of range \[0, 5\)"):
        NeighborSampler(data, [2])


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"indptr": torch.tensor([0, 2, 1]), "indices": torch.tensor([0])}, "indptr"),
        ({"indptr": torch.tensor([0, 1, 2]), "indices": torch.tensor([0, 7])}, "indices"),
        ({"indptr": torch.tensor([0, 2]), "indices": torch.tensor([0.0, 0.0])}, "indices"),
    ],
)
def test_malformed_csr_raises_input_error(kwargs: dict, source: str) -> None:
    with pytest.raises(InputError) as info:
        CSRGraph(**kwargs)
    assert info.value.source == source


@pytest.mark.parametrize("fanouts", [[], [0], [2, -3], [1.5]])
def test_bad_fanouts_raise_input_error(fanouts: list) -> None:
    with pytest.raises(InputError, match="fanouts"):
        NeighborSampler(_random_data(), fanouts)


def test_negative_seed_raises_input_error() -> None:
    with pytest.raises(InputError, match="seed"):
        NeighborSampler(_random_data(), [2], seed=-1)


def test_link_sampling_and_temporal_input_are_refused_clearly() -> None:
    sampler = NeighborSampler(_random_data(), [2])
    with pytest.raises(NotImplementedError, match="link sampling"):
        sampler.sample_from_edges(EdgeSamplerInput(None, torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(NotImplementedError, match="temporal"):
        sampler.sample_from_nodes(NodeSamplerInput(None, torch.tensor([0]), time=torch.tensor([1])))


@pytest.mark.data
def test_cora_batches_train_a_sage_layer() -> None:
    root = dataset_path("planetoid")
    if root is None:
        pytest.skip("dataset 'planetoid' not found under the data root (set SPARSEKIT_DATA)")
    data = load_planetoid(root)
    sampler = NeighborSampler(data, [10, 5], seed=0)
    loader = NodeLoader(data, node_sampler=sampler, input_nodes=data.train_mask, batch_size=70)
    batches = list(loader)
    assert sum(b.batch_size for b in batches) == int(data.train_mask.sum()) == 140
    batch = batches[0]
    assert torch.equal(data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
    conv = SAGEConv(data.num_features, 7)
    logits = conv(batch.x, batch.edge_index)[: batch.batch_size]
    loss = torch.nn.functional.cross_entropy(logits, batch.y[: batch.batch_size])
    loss.backward()
    assert torch.isfinite(loss) and conv.lin_l.weight.grad is not None
