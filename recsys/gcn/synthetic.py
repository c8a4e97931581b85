"""Synthetic large graphs for sampled-GCN benchmarks: power-law degrees, planted classes, on-disk features.

The edge model is Chung-Lu (Chung & Lu, PNAS 2002): node ``r`` of weight rank ``r`` gets weight
``(r + 1) ** (-1 / (degree_exponent - 1))``, and edge endpoints are drawn in proportion to weight, which
gives power-law in- and out-degrees with that exponent. Classes are planted as in a degree-corrected
stochastic block model: each node gets a uniform random class; a destination is drawn by weight over
all nodes, and its source, with probability ``homophily``, by weight within the destination's class
(otherwise over all nodes). Features are ``noise + signal * mu[class]`` with unit-norm random class
directions ``mu``, so neighbourhood aggregation separates the classes better than a node alone.

The graph is simple and directed (no self-loops, no repeated edge) with exactly ``num_edges`` edges,
stored as a CSR over *destination* nodes, i.e. in-neighbour lists, the layout
:class:`recsys.gcn.sampler.CSRGraph` samples from directly (PyG's CSC): ``indptr`` int64
(``num_nodes + 1``), ``indices`` int32 (int64 past 2**31 nodes). Node ids are a random permutation, so
ids carry neither degree nor class. Features are a float32 ``.npy`` of shape ``[num_nodes,
feature_dim]`` written chunk by chunk and opened as a read-only memmap, so the table never sits in RAM.
Everything is one artifact directory written with :func:`sparsekit.artifacts.write_artifact`: built
under a temporary name and renamed into place, so a killed run leaves no half-written graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from recsys.gcn.sampler import CSRGraph
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.errors import InputError

FORMAT = "synthetic-graph"
VERSION = 1
FILES = {"indptr": "indptr.npy", "indices": "indices.npy", "labels": "labels.npy", "features": "features.npy"}
EDGE_CHUNK = 1 << 22
FEATURE_CHUNK_BYTES = 64 << 20
MAX_EDGE_ROUNDS = 64


@dataclass(frozen=True)
class GraphSpec:
    """Parameters of a synthetic graph (recorded in the artifact manifest)."""

    num_nodes: int
    num_edges: int
    feature_dim: int
    num_classes: int = 10
    seed: int = 0
    degree_exponent: float = 2.5
    homophily: float = 0.8
    signal: float = 1.0

    def __post_init__(self) -> None:
        n = self.num_nodes
        _require(n >= 2, "num_nodes", f"must be >= 2, got {n}")
        most = n * (n - 1) // 2
        _require(0 <= self.num_edges <= most, "num_edges",
                 f"must be in [0, num_nodes * (num_nodes - 1) / 2 = {most}], got {self.num_edges}")
        _require(self.feature_dim >= 1, "feature_dim", f"must be >= 1, got {self.feature_dim}")
        _require(1 <= self.num_classes <= n, "num_classes",
                 f"must be in [1, num_nodes], got {self.num_classes}")
        _require(self.degree_exponent > 1, "degree_exponent", f"must be > 1, got {self.degree_exponent}")
        _require(0 <= self.homophily <= 1, "homophily", f"must be in [0, 1], got {self.homophily}")
        _require(self.signal >= 0, "signal", f"must be >= 0, got {self.signal}")


@dataclass(eq=False)
class SyntheticGraph:
    """An opened synthetic graph: in-neighbour CSR, memmapped features, labels."""

    path: Path
    graph: CSRGraph
    features: np.memmap
    labels: torch.Tensor
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    @property
    def num_edges(self) -> int:
        return self.graph.num_edges

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


def generate_graph(
    out_dir: str | Path,
    num_nodes: int,
    num_edges: int,
    feature_dim: int,
    num_classes: int = 10,
    seed: int = 0,
    *,
    degree_exponent: float = 2.5,
    homophily: float = 0.8,
    signal: float = 1.0,
    overwrite: bool = False,
    progress: bool = True,
) -> SyntheticGraph:
    """Generate a graph into the artifact directory ``out_dir`` and open it (see the module docstring)."""
    spec = GraphSpec(num_nodes, num_edges, feature_dim, num_classes, seed, degree_exponent, homophily, signal)
    check_fits(spec, Path(out_dir))
    edge_rng, feature_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    with write_artifact(out_dir, FORMAT, VERSION, params=asdict(spec), overwrite=overwrite) as writer:
        layout = _Layout.build(spec, edge_rng)
        labels = layout.labels_by_id()
        dst, src = _edges(spec, layout, edge_rng, progress)
        np.save(writer.path(FILES["indptr"]), _indptr(dst, num_nodes))
        del dst
        np.save(writer.path(FILES["indices"]), src.astype(np.int32 if num_nodes <= 2**31 - 1 else np.int64))
        del src
        np.save(writer.path(FILES["labels"]), labels)
        with open(writer.path(FILES["features"]), "wb") as fh:
            _write_features(fh, spec, labels, feature_rng, progress)
        writer.counts.update(nodes=num_nodes, edges=num_edges, feature_dim=feature_dim, classes=num_classes)
    return open_graph(out_dir, verify=False)


RAM_PER_NODE, RAM_PER_EDGE = 48, 48  # generator peak, bytes: layout + indptr + labels; keys, sort, src/dst


def check_fits(spec: GraphSpec, out: Path) -> None:
    """:class:`InputError` before any work when the generator's peak memory exceeds the available RAM, or
    the files exceed the free disk space under ``out`` (it used to die of MemoryError, be OOM-killed, or
    start writing a 40 TB feature file)."""
    import shutil

    import psutil

    ram = RAM_PER_NODE * spec.num_nodes + RAM_PER_EDGE * spec.num_edges
    free_ram = psutil.virtual_memory().available
    if ram > free_ram:
        raise InputError("nodes/edges", f"{spec.num_nodes:,} nodes and {spec.num_edges:,} edges need about "
                                        f"{ram / 2**30:.1f} GiB of RAM to generate; "
                                        f"{free_ram / 2**30:.1f} GiB is available")
    disk = 4 * spec.num_nodes * spec.feature_dim + 8 * spec.num_edges + 24 * spec.num_nodes
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    free_disk = shutil.disk_usage(existing).free
    if disk > free_disk:
        raise InputError("dim", f"{spec.num_nodes:,} nodes x {spec.feature_dim}-d float32 features (and the "
                                f"edges) take {disk / 2**30:.1f} GiB on disk; {free_disk / 2**30:.1f} GiB is "
                                f"free under {existing}")


def open_graph(path: str | Path, verify: bool = True) -> SyntheticGraph:
    """Open a graph written by :func:`generate_graph`; ``verify`` checks every file's SHA-256 (slow for big
    feature tables; sizes are always checked)."""
    path = Path(path)
    manifest = open_artifact(path, format=FORMAT, version=VERSION, verify=verify)
    graph = CSRGraph(
        indptr=torch.from_numpy(np.load(path / FILES["indptr"])),
        indices=torch.from_numpy(np.load(path / FILES["indices"])),
    )
    features = np.load(path / FILES["features"], mmap_mode="r")
    labels = torch.from_numpy(np.load(path / FILES["labels"]))
    return SyntheticGraph(path, graph, features, labels, int(manifest.params["num_classes"]))


@dataclass
class _Layout:
    """Nodes in class-major order ("positions"): class blocks, by weight within a block.

    ``cdf`` is the cumulative normalised weight over positions, ``bounds`` the class block edges and
    ``node_id`` the public (randomly permuted) id of each position.
    """

    cdf: np.ndarray
    bounds: np.ndarray
    node_id: np.ndarray

    @classmethod
    def build(cls, spec: GraphSpec, rng: np.random.Generator) -> _Layout:
        rank_class = rng.integers(0, spec.num_classes, spec.num_nodes)
        order = np.argsort(rank_class, kind="stable")  # by class, then by weight rank
        weight = (order + 1.0) ** (-1.0 / (spec.degree_exponent - 1.0))
        cdf = np.cumsum(weight)
        cdf /= cdf[-1]
        bounds = np.zeros(spec.num_classes + 1, dtype=np.int64)
        np.cumsum(np.bincount(rank_class, minlength=spec.num_classes), out=bounds[1:])
        return cls(cdf=cdf, bounds=bounds, node_id=rng.permutation(spec.num_nodes))

    def class_of(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, pos, side="right") - 1

    def labels_by_id(self) -> np.ndarray:
        labels = np.empty(self.node_id.size, dtype=np.int64)
        labels[self.node_id] = self.class_of(np.arange(self.node_id.size))
        return labels

    def draw(self, u: np.ndarray, lo: np.ndarray | float = 0.0, hi: np.ndarray | float = 1.0) -> np.ndarray:
        """Positions drawn by weight: uniform ``u`` in [0, 1) mapped into the cdf range ``[lo, hi)``."""
        pos = np.searchsorted(self.cdf, lo + u * (hi - lo), side="right")
        return np.minimum(pos, self.cdf.size - 1)

    def draw_in_class(self, u: np.ndarray, cls: np.ndarray) -> np.ndarray:
        first, last = self.bounds[cls], self.bounds[cls + 1] - 1
        lo = np.where(first > 0, self.cdf[np.maximum(first - 1, 0)], 0.0)
        return np.clip(self.draw(u, lo, self.cdf[last]), first, last)


def _edges(
    spec: GraphSpec, layout: _Layout, rng: np.random.Generator, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``num_edges`` distinct non-loop edges as (dst, src) id arrays, sorted by (dst, src)."""
    n = spec.num_nodes
    keys = np.empty(0, dtype=np.int64)
    for _ in range(MAX_EDGE_ROUNDS):
        missing = spec.num_edges - keys.size
        if missing <= 0:
            break
        fresh = _draw_edge_keys(spec, layout, rng, math.ceil(missing * 1.05) + 16, progress)
        keys = _sorted_unique(np.concatenate([keys, fresh]))
    else:
        raise InputError("num_edges", f"could not draw {spec.num_edges} distinct edges: too dense a graph")
    if keys.size > spec.num_edges:  # drop a uniform random surplus
        keys = np.delete(keys, rng.choice(keys.size, keys.size - spec.num_edges, replace=False))
    return keys // n, keys % n


def _draw_edge_keys(
    spec: GraphSpec, layout: _Layout, rng: np.random.Generator, count: int, progress: bool
) -> np.ndarray:
    """``count`` edges drawn from the model (loops dropped), as keys ``dst * num_nodes + src``."""
    keys = []
    for start in tqdm(range(0, count, EDGE_CHUNK), desc="edges", unit="chunk", disable=not progress):
        m = min(EDGE_CHUNK, count - start)
        dst = layout.draw(rng.random(m))
        src = layout.draw(rng.random(m))
        same = rng.random(m) < spec.homophily
        src[same] = layout.draw_in_class(rng.random(int(same.sum())), layout.class_of(dst[same]))
        dst, src = layout.node_id[dst], layout.node_id[src]
        loop = dst == src
        keys.append(dst[~loop] * spec.num_nodes + src[~loop])
    return np.concatenate(keys) if keys else np.empty(0, dtype=np.int64)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    keys.sort()
    keep = np.ones(keys.size, dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def _indptr(dst: np.ndarray, num_nodes: int) -> np.ndarray:
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return indptr


def _write_features(
    fh: BinaryIO, spec: GraphSpec, labels: np.ndarray, rng: np.random.Generator, progress: bool
) -> None:
    """Write the ``[num_nodes, feature_dim]`` float32 ``.npy`` chunk by chunk (never the whole table)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (spec.num_nodes, spec.feature_dim)}
    np.lib.format.write_array_header_1_0(fh, header)
    mu = rng.standard_normal((spec.num_classes, spec.feature_dim))
    mu *= spec.signal / np.linalg.norm(mu, axis=1, keepdims=True)
    mu = mu.astype(np.float32)
    rows = max(1, FEATURE_CHUNK_BYTES // (4 * spec.feature_dim))
    for start in tqdm(range(0, spec.num_nodes, rows), desc="features", unit="chunk", disable=not progress):
        stop = min(start + rows, spec.num_nodes)
        chunk = rng.standard_normal((stop - start, spec.feature_dim), dtype=np.float32)
        chunk += mu[labels[start:stop]]
        fh.write(chunk.tobytes())


def _require(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise InputError(source, message)
