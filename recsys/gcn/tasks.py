"""Node-classification tasks for :func:`recsys.gcn.training.train_gcn`: Planetoid graphs and synthetic graphs.

- Planetoid (Cora, CiteSeer, PubMed; Yang et al., ICML 2016): the public split (140 / 500 / 1000 nodes on
  Cora) and row-normalised bag-of-words features, as in Kipf & Welling's GCN setup.
- Synthetic (:mod:`recsys.gcn.synthetic`): features stay in the on-disk memmap; train / val / test are
  disjoint random node sets drawn with a fixed seed (default 5% / 1% / 1%, the order of ogbn-papers100M's
  labelled share), so an epoch touches a realistic share of a large graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recsys.gcn.features import NodeFeatureStore
from recsys.gcn.sampler import CSRGraph
from recsys.gcn.synthetic import FORMAT as SYNTHETIC_FORMAT
from recsys.gcn.synthetic import open_graph
from recsys.gcn.training import NodeTask
from sparsekit.artifacts import MANIFEST
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


def load_task(data: str | Path, mode: str = "zero-copy", device: str | None = None,
              name: str = "Cora") -> NodeTask:
    """A synthetic graph directory (it has a manifest), or a Planetoid root holding ``<name>/raw``."""
    path = Path(data)
    if (path / MANIFEST).is_file():
        fmt = json.loads((path / MANIFEST).read_text()).get("format")
        if fmt != SYNTHETIC_FORMAT:
            raise InputError(path, f"artifact format {fmt!r} is not a graph ({SYNTHETIC_FORMAT!r})")
        return synthetic_task(path, mode, device)
    if (path / name / "raw").is_dir():
        return planetoid_task(path, name, mode, device)
    raise InputError(path, f"not a graph: expected a synthetic graph directory (manifest.json) or a "
                           f"Planetoid root holding {name}/raw/")
