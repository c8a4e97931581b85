"""Node-classification tasks for :func:`recsys.gcn.training.train_gcn`: Planetoid graphs, synthetic graphs and
graphs of your own.

- Planetoid (Cora, CiteSeer, PubMed; Yang et al., ICML 2016): the public split (140 / 500 / 1000 nodes on
  Cora) and row-normalised bag-of-words features, as in Kipf & Welling's GCN setup.
- Synthetic (:mod:`recsys.gcn.synthetic`): features stay in the on-disk memmap; train / val / test are
  disjoint random node sets drawn with a fixed seed (default 5% / 1% / 1%, the order of ogbn-papers100M's
  labelled share), so an epoch touches a realistic share of a large graph.
- Your own graph: one ``.npz`` with PyG's array names (:func:`npz_task`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from recsys.gcn.features import NodeFeatureStore
from recsys.gcn.sampler import CSRGraph
from recsys.gcn.synthetic import FORMAT as SYNTHETIC_FORMAT
from recsys.gcn.synthetic import open_graph
from recsys.gcn.training import NodeTask
from sparsekit.artifacts import MANIFEST, artifact_format, recover
from sparsekit.errors import InputError


def planetoid_task(root: str | Path, name: str = "Cora", mode: str = "zero-copy",
                   device: str | None = None) -> NodeTask:
    """The public split of Planetoid graph ``name`` stored under ``<root>/<name>/raw``."""
    from torch_geometric.transforms import NormalizeFeatures

    from recsys.data.planetoid import load_planetoid

    data = NormalizeFeatures()(load_planetoid(root, name))
    graph = CSRGraph.from_edge_index(data.edge_index, data.num_nodes)
    return NodeTask(
        graph=graph,
        features=NodeFeatureStore(data.x.contiguous(), mode=mode, device=device),
        labels=data.y,
        train_idx=data.train_mask.nonzero().view(-1),
        val_idx=data.val_mask.nonzero().view(-1),
        test_idx=data.test_mask.nonzero().view(-1),
        num_classes=int(data.y.max()) + 1,
    )


def synthetic_task(path: str | Path, mode: str = "zero-copy", device: str | None = None,
                   fractions: tuple[float, float, float] = (0.05, 0.01, 0.01), seed: int = 0) -> NodeTask:
    """A graph from :func:`recsys.gcn.synthetic.generate_graph` with random disjoint node splits."""
    if sum(fractions) > 1 or min(fractions) < 0:
        raise InputError("fractions", f"need three non-negative shares summing to <= 1, got {fractions}")
    g = open_graph(path, verify=False)
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(seed))
    sizes = [int(f * g.num_nodes) for f in fractions]
    train, val, test = torch.split(perm[: sum(sizes)], sizes)
    return NodeTask(
        graph=g.graph,
        features=NodeFeatureStore(g.features, mode=mode, device=device),
        labels=g.labels.long(),
        train_idx=train.sort().values,
        val_idx=val.sort().values,
        test_idx=test.sort().values,
        num_classes=g.num_classes,
    )


NPZ_ARRAYS = ("x", "edge_index", "y")
NPZ_MASKS = ("train_mask", "val_mask", "test_mask")


def npz_task(path: str | Path, mode: str = "zero-copy", device: str | None = None,
             fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
             undirected: bool = True) -> NodeTask:
    """A graph of your own in one ``.npz`` file (``numpy.savez``), with PyG's names: ``x`` (node features
    ``[N, F]``), ``edge_index`` (``[2, E]``, source then destination), ``y`` (class ids ``[N]``; -1 marks an
    unlabelled node) and optionally boolean ``train_mask``, ``val_mask`` and ``test_mask`` (all three or
    none). Without masks the labelled nodes are split by ``fractions`` with ``seed``. With ``undirected``
    every edge also runs backwards (PyG's ``ToUndirected``); repeated edges are kept once.
    """
    arrays = _read_npz(Path(path))
    x, y = torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).long()
    edges = torch.from_numpy(arrays["edge_index"]).long()
    if undirected:
        edges = torch.cat([edges, edges.flip(0)], dim=1)
    edges = torch.unique(edges, dim=1)
    given = [m for m in NPZ_MASKS if m in arrays]
    if given and len(given) < len(NPZ_MASKS):
        raise InputError(path, f"has {given} but not all of {list(NPZ_MASKS)}: give all three masks, or none")
    if given:
        splits = [torch.from_numpy(arrays[m]).nonzero().view(-1) for m in NPZ_MASKS]
    else:
        labelled = (y >= 0).nonzero().view(-1)
        perm = labelled[torch.randperm(labelled.numel(), generator=torch.Generator().manual_seed(seed))]
        sizes = [int(f * labelled.numel()) for f in fractions]
        splits = [part.sort().values for part in torch.split(perm[: sum(sizes)], sizes)]
    for name, ids in zip(NPZ_MASKS, splits, strict=True):
        if ids.numel() and int(y[ids].min()) < 0:
            raise InputError(path, f"{name} selects unlabelled nodes (y = -1)")
    return NodeTask(graph=CSRGraph.from_edge_index(edges, x.shape[0]),
                    features=NodeFeatureStore(x.contiguous(), mode=mode, device=device), labels=y,
                    train_idx=splits[0], val_idx=splits[1], test_idx=splits[2], num_classes=int(y.max()) + 1)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a file")
    if not zipfile.is_zipfile(path):  # numpy would talk about pickles here
        raise InputError(path, "not a complete .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:  # a truncated .npz: BadZipFile
        raise InputError(path, f"cannot read the graph (not a complete .npz): {exc}") from exc
    missing = [k for k in NPZ_ARRAYS if k not in arrays]
    if missing:
        raise InputError(path, f"missing array(s) {missing} (has {sorted(arrays)})")
    x, edges, y = (arrays[k] for k in NPZ_ARRAYS)
    n = x.shape[0] if x.ndim == 2 else -1
    checks = [
        (x.ndim == 2 and np.issubdtype(x.dtype, np.number),
         f"x must be a numeric [N, F] array, got {x.shape}"),
        (y.shape == (n,) and np.issubdtype(y.dtype, np.integer), f"y must be integer [N={n}], got {y.shape}"),
        (edges.ndim == 2 and edges.shape[0] == 2 and np.issubdtype(edges.dtype, np.integer),
         f"edge_index must be an integer [2, E] array, got {edges.shape} {edges.dtype}"),
    ]
    checks += [(arrays[m].shape == (n,) and arrays[m].dtype == bool, f"{m} must be a boolean [N={n}] array")
               for m in NPZ_MASKS if m in arrays]
    for ok, reason in checks:
        if not ok:
            raise InputError(path, reason)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise InputError(path, f"edge_index holds node ids outside [0, {n})")
    if not np.isfinite(x).all():
        raise InputError(path, "x holds NaN or infinite values")
    if not (y >= 0).any():
        raise InputError(path, "no node is labelled (every y is -1)")
    return arrays


def load_task(data: str | Path, mode: str = "zero-copy", device: str | None = None,
              name: str = "Cora") -> NodeTask:
    """A graph ``.npz`` of your own, a synthetic graph directory (it has a manifest), or a Planetoid root
    holding ``<name>/raw``."""
    path = Path(data)
    if path.suffix == ".npz":
        return npz_task(path, mode, device)
    recover(path)  # a synthetic graph a crash mid-replace left only as its backup
    if (path / MANIFEST).is_file():
        fmt = artifact_format(path)
        if fmt != SYNTHETIC_FORMAT:
            raise InputError(path, f"artifact format {fmt!r} is not a graph ({SYNTHETIC_FORMAT!r})")
        return synthetic_task(path, mode, device)
    if (path / name / "raw").is_dir():
        return planetoid_task(path, name, mode, device)
    raise InputError(path, f"not a graph: expected a .npz graph, a synthetic graph directory "
                           f"(manifest.json) or a Planetoid root holding {name}/raw/")
