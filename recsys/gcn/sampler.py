"""Uniform multi-hop neighbor sampling (GraphSAGE, Hamilton et al., NeurIPS 2017) behind PyG's BaseSampler.

PyG's own ``NeighborSampler`` needs pyg-lib or torch-sparse, neither installable here. This module does
the same job in plain, vectorised torch, so PyG's ``NodeLoader`` drives it and stock PyG layers train
on the ``Data`` mini-batches it yields.

Conventions follow PyG exactly. The graph is held as a :class:`CSRGraph` over *destination* nodes
(PyG's CSC): row ``v`` lists the sources ``u`` of the edges ``u -> v``. Each hop samples, for every node
first reached in the previous hop (the seeds for hop 1), up to ``fanout`` of its in-edges uniformly
without replacement (all of them when the degree is at most the fanout). A sampled edge comes back as
``row`` = local index of the neighbour (source) and ``col`` = local index of the node it was sampled
for, so messages flow neighbour -> seed. Local ids put the seeds first, in input order, then new nodes
hop by hop in first-seen order. ``edge`` holds CSR positions; :attr:`NeighborSampler.edge_permutation`
maps them back to the original edge ids (``NodeLoader`` turns them into ``batch.e_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, EdgeSamplerInput, NodeSamplerInput, SamplerOutput

from sparsekit.errors import InputError

ALL_NEIGHBORS = -1
"""A fanout that takes every neighbour of a node (PyG's ``-1``)."""

_INT_DTYPES = (torch.int32, torch.int64)
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class CSRGraph:
    """In-neighbour lists (CSR): ``indices[indptr[v]:indptr[v + 1]]`` are the sources of edges into ``v``.

    ``indptr`` is int64 (``num_nodes + 1`` entries); ``indices`` is int32 or int64 (int32 halves the
    memory of large graphs and is what :meth:`from_edge_index` picks when the ids fit). ``perm``, when
    set, maps a CSR position to the edge's id in the original ``edge_index``.
    """

    indptr: Tensor
    indices: Tensor
    perm: Tensor | None = None

    def __post_init__(self) -> None:
        _check_csr(self.indptr, self.indices, self.perm)

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_edges(self) -> int:
        return self.indices.numel()

    def in_degree(self, nodes: Tensor | None = None) -> Tensor:
        """In-degree of ``nodes`` (all nodes when ``None``), int64."""
        if nodes is None:
            return self.indptr[1:] - self.indptr[:-1]
        return self.indptr[nodes + 1] - self.indptr[nodes]

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int) -> CSRGraph:
        """Group the edges ``edge_index[0] -> edge_index[1]`` by destination, stably."""
        _check_edge_index(edge_index, num_nodes)
        row, col = edge_index[0].long(), edge_index[1].long()
        perm = torch.sort(col, stable=True).indices
        indptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(col, minlength=num_nodes), dim=0, out=indptr[1:])
        dtype = torch.int32 if num_nodes <= _INT32_MAX else torch.int64
        return cls(indptr=indptr, indices=row[perm].to(dtype), perm=perm)

    def loader_data(self, **node_attrs: object) -> Data:
        """A ``Data`` shell for ``NodeLoader``: ``num_nodes``, the given node attributes (``x``, ``y`` ...)
        and an empty ``edge_index`` that ``NodeLoader`` fills with each batch's sampled edges, so a large
        graph never needs an ``edge_index`` copy. Node attributes may be numpy memmaps (gathered by row).
        """
        return Data(edge_index=torch.empty((2, 0), dtype=torch.int64), num_nodes=self.num_nodes, **node_attrs)


class NeighborSampler(BaseSampler):
    """Uniform neighbor sampler without replacement, one fanout per hop, seeded.

    ``graph`` is a PyG ``Data`` (its ``edge_index`` and ``num_nodes``) or a prebuilt :class:`CSRGraph`.
    ``fanouts[k]`` caps the in-edges sampled per node at hop ``k + 1`` (``-1`` takes all). Two samplers
    with the same ``seed`` return identical batches for identical calls. Inside ``DataLoader`` workers
    the generator is reseeded from ``seed`` and the worker's seed, so workers draw independent streams.
    """

    def __init__(self, graph: Data | CSRGraph, fanouts: Sequence[int], seed: int = 0) -> None:
        self.graph = graph if isinstance(graph, CSRGraph) else _csr_from_data(graph)
        self.fanouts = _check_fanouts(fanouts)
        if not isinstance(seed, int) or seed < 0:
            raise InputError("seed", f"must be a non-negative int, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    @property
    def edge_permutation(self) -> Tensor | None:
        return self.graph.perm

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs: object) -> SamplerOutput:
        """PyG entry point (called by ``NodeLoader``): sample around ``index.node``."""
        if index.input_type is not None:
            raise NotImplementedError("NeighborSampler samples homogeneous graphs only (input_type is set)")
        if index.time is not None:
            raise NotImplementedError("NeighborSampler does not do temporal sampling (input_time is set)")
        out = self.sample(index.node)
        out.metadata = (index.input_id, index.time)
        return out

    def sample_from_edges(self, index: EdgeSamplerInput, neg_sampling: object = None) -> SamplerOutput:
        raise NotImplementedError(
            "NeighborSampler supports node-level mini-batches only (NodeLoader); link sampling "
            "(LinkLoader / sample_from_edges) is not implemented"
        )

    def sample(self, seeds: Tensor) -> SamplerOutput:
        """Sample the multi-hop neighbourhood of the global node ids ``seeds`` (distinct, in range)."""
        node = _check_seeds(seeds, self.num_nodes)
        generator = self._generator()
        rows, cols, edges = [], [], []
        num_sampled_nodes, num_sampled_edges = [node.numel()], []
        frontier_start = 0
        for fanout in self.fanouts:
            frontier = node[frontier_start:]
            pos, dst = sample_in_edges(self.graph.indptr, frontier, fanout, generator)
            num_before = node.numel()
            node, src = _append_new_nodes(node, self.graph.indices[pos].long())
            rows.append(src)
            cols.append(dst + frontier_start)
            edges.append(pos)
            num_sampled_nodes.append(node.numel() - num_before)
            num_sampled_edges.append(pos.numel())
            frontier_start = num_before
        return SamplerOutput(
            node=node,
            row=torch.cat(rows),
            col=torch.cat(cols),
            edge=torch.cat(edges),
            batch=None,
            num_sampled_nodes=num_sampled_nodes,
            num_sampled_edges=num_sampled_edges,
        )

    def _generator(self) -> torch.Generator:
        """The sampler's generator; in a ``DataLoader`` worker, one reseeded from (seed, worker seed)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            state = np.random.SeedSequence([self.seed, info.seed]).generate_state(2, dtype=np.uint32)
            self.generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            self._worker_seed = info.seed
        return self.generator


def sample_in_edges(
    indptr: Tensor, nodes: Tensor, fanout: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Sample up to ``fanout`` distinct in-edges of each of ``nodes`` (all of them when ``fanout`` is -1).

    Returns ``(pos, dst)``: the CSR positions of the sampled edges and, for each, the index into
    ``nodes`` of the node it was sampled for; edges come grouped by node, in the order of ``nodes``.
    """
    start = indptr[nodes]
    degree = indptr[nodes + 1] - start
    if fanout == ALL_NEIGHBORS:
        dst = torch.repeat_interleave(torch.arange(nodes.numel()), degree)
        first = torch.cumsum(degree, dim=0) - degree
        offsets = torch.arange(dst.numel()) - first[dst]
        return start[dst] + offsets, dst
    # a fanout above every degree takes all edges: cap it, or the [nodes, fanout] tables below grow with it
    fanout = min(fanout, int(degree.max())) if nodes.numel() else 0
    offsets = torch.arange(fanout).expand(nodes.numel(), fanout).clone()
    over = degree > fanout
    if bool(over.any()):
        offsets[over] = floyd_sample(degree[over], fanout, generator)
    keep = torch.arange(fanout) < torch.clamp(degree, max=fanout).unsqueeze(1)
    pos = (start.unsqueeze(1) + offsets)[keep]
    dst = torch.arange(nodes.numel()).unsqueeze(1).expand(-1, fanout)[keep]
    return pos, dst


def floyd_sample(sizes: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct uniform draws from ``range(n)`` for every ``n`` in ``sizes`` (each ``n >= k``).

    Floyd's algorithm, vectorised over rows: step ``j`` draws ``t`` from ``[0, n - k + j]`` and keeps it,
    or ``n - k + j`` if ``t`` was already taken. Every k-subset is equally likely; the cost is ``O(k^2)``
    per row whatever the degree, so hubs cost no more than leaves.
    """
    out = torch.empty((sizes.numel(), k), dtype=torch.int64)
    for j in range(k):
        upper = sizes - k + j
        draw = torch.rand(sizes.numel(), generator=generator, dtype=torch.float64)
        t = torch.minimum((draw * (upper + 1)).long(), upper)
        taken = (out[:, :j] == t.unsqueeze(1)).any(dim=1)
        out[:, j] = torch.where(taken, upper, t)
    return out


def _append_new_nodes(node: Tensor, found: Tensor) -> tuple[Tensor, Tensor]:
    """Append the ids in ``found`` not yet in ``node`` (distinct ids), in first-seen order.

    Returns the extended ``node`` and the local index of every entry of ``found``.
    """
    known = node.numel()
    both = torch.cat([node, found])
    uniq, inverse = torch.unique(both, return_inverse=True)
    first = torch.full((uniq.numel(),), both.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(both.numel()), reduce="amin")
    new = first >= known
    is_first = torch.zeros(both.numel(), dtype=torch.bool)
    is_first[first[new]] = True  # first occurrences of new ids, found in position order without a sort
    rank = torch.cumsum(is_first, dim=0) - 1
    local = first.clone()  # a known node's first position in ``both`` is its local index
    local[new] = known + rank[first[new]]
    return torch.cat([node, both[is_first]]), local[inverse[known:]]


def _check_seeds(seeds: Tensor, num_nodes: int) -> Tensor:
    if not isinstance(seeds, Tensor) or seeds.dim() != 1 or seeds.dtype not in _INT_DTYPES:
        raise InputError("input_nodes", "seed nodes must be a 1-D int32/int64 tensor of node ids")
    seeds = seeds.long()
    if seeds.numel() == 0:
        raise InputError("input_nodes", "empty batch of seed nodes")
    low, high = int(seeds.min()), int(seeds.max())
    if low < 0 or high >= num_nodes:
        bad = low if low < 0 else high
        raise InputError("input_nodes", f"node id {bad} out of range [0, {num_nodes})")
    if torch.unique(seeds).numel() != seeds.numel():
        raise InputError("input_nodes", "seed nodes of one batch must be distinct")
    return seeds


def _check_fanouts(fanouts: Sequence[int]) -> list[int]:
    values = list(fanouts)
    if not values:
        raise InputError("fanouts", "need at least one hop")
    for hop, value in enumerate(values):
        if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != ALL_NEIGHBORS):
            raise InputError("fanouts", f"hop {hop}: must be a positive int or -1 (all), got {value!r}")
    return values


def _check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dtype not in _INT_DTYPES:
        raise InputError("edge_index", "must be an int32/int64 tensor")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise InputError("edge_index", f"must have shape [2, num_edges], got {list(edge_index.shape)}")
    if num_nodes < 0:
        raise InputError("num_nodes", f"must be >= 0, got {num_nodes}")
    if edge_index.numel():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            bad = low if low < 0 else high
            raise InputError("edge_index", f"node id {bad} out of range [0, {num_nodes})")


def _check_csr(indptr: Tensor, indices: Tensor, perm: Tensor | None) -> None:
    if indptr.dtype != torch.int64 or indptr.dim() != 1 or indptr.numel() < 1:
        raise InputError("indptr", "must be a 1-D int64 tensor of num_nodes + 1 offsets")
    if indices.dim() != 1 or indices.dtype not in _INT_DTYPES:
        raise InputError("indices", "must be a 1-D int32/int64 tensor")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel():
        raise InputError("indptr", f"must run from 0 to len(indices) = {indices.numel()}")
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise InputError("indptr", "must be non-decreasing")
    num_nodes = indptr.numel() - 1
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_nodes):
        raise InputError("indices", f"node id out of range [0, {num_nodes})")
    if perm is not None and (perm.dtype != torch.int64 or perm.shape != indices.shape):
        raise InputError("perm", "must be an int64 tensor with one entry per edge")


def _csr_from_data(data: Data) -> CSRGraph:
    if not isinstance(data, Data):
        raise InputError("graph", f"expected a torch_geometric Data or a CSRGraph, got {type(data).__name__}")
    if data.edge_index is None:
        raise InputError("edge_index", "the graph has no edge_index")
    return CSRGraph.from_edge_index(data.edge_index, int(data.num_nodes))
