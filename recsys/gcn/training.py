"""Sampled mini-batch node classification with stock PyG models and a per-epoch time breakdown.

Trains GraphSAGE (Hamilton et al., NeurIPS 2017) or GCN (Kipf & Welling, ICLR 2017) — the stock
``torch_geometric.nn.models`` classes — on mini-batches from PyG's ``NodeLoader`` driven by our CSR
:class:`~recsys.gcn.sampler.NeighborSampler`. Node features are not sliced by the loader: each batch's rows
are gathered by a :class:`~recsys.gcn.features.NodeFeatureStore`, which on CUDA reads them straight from
pinned host memory (zero-copy, PyTorch-Direct, Min et al., VLDB 2021), or gathers on the CPU and copies
(the baseline), or reads a device-resident table.

Every epoch records where its time went:

- ``sample``: drawing the batch from the loader (neighbour sampling + relabelling + slicing labels);
- ``gather``: the feature store's gather (for ``zero-copy`` this includes the PCIe reads it performs);
- ``transfer``: moving the sampled edges and labels (and, for ``cpu-copy``, the gathered rows) to the device;
- ``compute``: forward, backward and the optimizer step.

On CUDA each phase is closed by a synchronisation so the split is exact (this costs the overlap a production
loop would have). Model selection uses validation accuracy; test accuracy is read once, at the best epoch.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from recsys.gcn.features import NodeFeatureStore
from recsys.gcn.sampler import ALL_NEIGHBORS, CSRGraph, NeighborSampler
from sparsekit.best_state import BestState
from sparsekit.bounds import at_least, count, positive, within
from sparsekit.device import resolve_device
from sparsekit.errors import InputError

MODELS = ("sage", "gcn")
FEATURE_STORES = ("zero-copy", "cpu-copy", "device")
PHASES = ("sample", "gather", "transfer", "compute")


@dataclass
class GCNTrainConfig:
    """Hyper-parameters of :func:`train_gcn` (defaults: GraphSAGE-mean on Cora-sized graphs)."""

    model: str = "sage"
    fanouts: tuple[int, ...] = (10, 5)
    hidden: int = 128
    dropout: float = 0.5
    lr: float = 0.01
    weight_decay: float = 5e-4
    epochs: int = 50
    batch_size: int = 64
    feature_store: str = "zero-copy"
    device: str | None = None
    seed: int = 0
    eval_fanout: int = ALL_NEIGHBORS  # evaluation fan-out per hop (-1: every neighbour)
    max_batches: int | None = None  # cap per epoch (benchmarks on very large graphs)
    evaluate: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InputError("model", f"unknown GCN model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.feature_store not in FEATURE_STORES:
            raise InputError("feature_store", f"unknown mode {self.feature_store!r}; choose one of "
                                              f"{', '.join(FEATURE_STORES)}")
        _check_fanouts(self.fanouts)
        count(self, 1, "hidden", "epochs", "batch_size", "max_batches")
        count(self, 0, "seed")
        within(self, 0, 2**32 - 1, "seed")  # per-epoch seeds seed * 100_003 + epoch fit int64
        at_least(self, 0, "weight_decay")
        within(self, 0.0, 1.0, "dropout", open_high=True)
        positive(self, "lr")
        if self.eval_fanout != ALL_NEIGHBORS:
            count(self, 1, "eval_fanout")
        self.fanouts = tuple(int(f) for f in self.fanouts)
        self.device = resolve_device(self.device)


SPLITS = ("train_idx", "val_idx", "test_idx")


def _check_fanouts(fanouts: Sequence[int]) -> None:
    """Each hop's fanout is a positive int or ``ALL_NEIGHBORS`` (-1), as the sampler takes them."""
    values = list(fanouts)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                         or (v < 1 and v != ALL_NEIGHBORS) for v in values):
        raise InputError("fanouts", f"need one positive integer or -1 (all neighbours) per hop, got {values}")


@dataclass
class NodeTask:
    """A node-classification problem: graph, features, labels and the train/val/test node ids.

    Each split is a 1-D integer tensor of distinct node ids, or a boolean mask over the nodes (PyG's
    ``data.train_mask``), which is turned into the ids it selects.
    """

    graph: CSRGraph
    features: NodeFeatureStore
    labels: Tensor
    train_idx: Tensor
    val_idx: Tensor
    test_idx: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        n = self.graph.num_nodes
        if self.features.num_nodes != n:
            raise InputError("features", f"{self.features.num_nodes} rows but the graph has {n} nodes")
        if self.labels.shape[0] != n:
            raise InputError("labels", f"{self.labels.shape[0]} labels but the graph has {n} nodes")
        for name in SPLITS:
            ids = _split_ids(name, getattr(self, name), n)
            _check_split_labels(name, self.labels[ids], self.num_classes)
            setattr(self, name, ids)
        _check_disjoint({name: getattr(self, name) for name in SPLITS}, n)


def _check_disjoint(splits: dict[str, Tensor], num_nodes: int) -> None:
    """No node in two splits: a test node trained on would make the test accuracy a training one."""
    owner = torch.full((num_nodes,), -1, dtype=torch.long)
    names = list(splits)
    for i, name in enumerate(names):
        ids = splits[name]
        taken = ids[owner[ids] >= 0]
        if taken.numel():
            node = int(taken[0])
            raise InputError(name, f"shares node {node} with {names[int(owner[node])]} "
                                   f"({taken.numel()} shared): the splits must be disjoint")
        owner[ids] = i


def _check_split_labels(name: str, labels: Tensor, num_classes: int) -> None:
    """Every node of a split carries a class id in ``[0, num_classes)`` (-1, unlabelled, is not one)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise InputError(name, f"selects a node labelled {bad}; labels must lie in [0, num_classes = "
                               f"{num_classes}) (-1 marks an unlabelled node)")


def _split_ids(name: str, ids: Tensor, num_nodes: int) -> Tensor:
    """The split as distinct int64 node ids; a boolean mask over the nodes gives the ids it selects."""
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        raise InputError(name, "must be a 1-D tensor of node ids or a boolean node mask")
    if ids.dtype == torch.bool:
        if ids.numel() != num_nodes:
            raise InputError(name, f"boolean mask has {ids.numel()} entries but the graph has "
                                   f"{num_nodes} nodes")
        return ids.nonzero().view(-1)
    if ids.is_floating_point() or ids.is_complex():
        raise InputError(name, f"node ids must be integers, got {ids.dtype}")
    ids = ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_nodes):
        raise InputError(name, f"node ids must lie in [0, {num_nodes}); got min {int(ids.min())}, "
                               f"max {int(ids.max())}")
    if torch.unique(ids).numel() != ids.numel():
        raise InputError(name, "node ids must be distinct (a repeated id fails the sampler mid-epoch)")
    return ids


@dataclass
class EpochStats:
    """One epoch: mean training loss, seconds per phase, seeds per second, and validation accuracy."""

    epoch: int
    loss: float
    seconds: dict[str, float]
    seeds_per_s: float
    val_acc: float | None = None


@dataclass
class GCNResult:
    """The best model (by validation accuracy), its accuracies and the per-epoch history."""

    model: nn.Module
    best_epoch: int
    val_acc: float | None
    test_acc: float | None
    history: list[EpochStats] = field(default_factory=list)

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "history": [asdict(h) for h in self.history]}


def build_model(kind: str, in_channels: int, hidden: int, out_channels: int, num_layers: int,
                dropout: float) -> nn.Module:
    """A stock PyG ``GraphSAGE`` (mean aggregation) or ``GCN`` with ``num_layers`` layers."""
    from torch_geometric.nn.models import GCN, GraphSAGE

    cls = GraphSAGE if kind == "sage" else GCN
    model = cls(in_channels, hidden, num_layers, out_channels, dropout=dropout)
    model.in_channels = in_channels
    return model


def check_feature_width(model: nn.Module, features: NodeFeatureStore) -> None:
    """Raise :class:`InputError` when the feature table's width isn't what the model's first layer takes."""
    expected = getattr(model, "in_channels", None)
    if expected is not None and expected != features.dim:
        raise InputError("features", f"feature width {features.dim} does not match the model, which expects "
                                     f"{expected}-d node features")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Accumulates wall seconds per phase, synchronising the device at each phase boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - self._t
        self._t = now


def _loader(task: NodeTask, fanouts: Sequence[int], seeds: Tensor, batch_size: int, shuffle: bool,
            seed: int) -> Iterator:
    from torch_geometric.loader import NodeLoader

    sampler = NeighborSampler(task.graph, fanouts, seed=seed)
    data = task.graph.loader_data(y=task.labels)
    return NodeLoader(data, node_sampler=sampler, input_nodes=seeds, batch_size=batch_size, shuffle=shuffle)


def _gather(store: NodeFeatureStore, ids: Tensor, device: torch.device, clock: _Clock) -> Tensor:
    """The batch's feature rows on ``device``; "cpu-copy" on CUDA is timed as gather, then transfer."""
    if store.mode == "cpu-copy" and device.type == "cuda":
        rows = store.gather_host(ids)
        clock.lap("gather")
        return rows.to(device)
    rows = store.gather(ids)
    clock.lap("gather")
    return rows.to(device)


def _train_epoch(model: nn.Module, task: NodeTask, opt: torch.optim.Optimizer, config: GCNTrainConfig,
                 device: torch.device, epoch: int) -> EpochStats:
    model.train()
    gen_seed = config.seed * 100_003 + epoch
    torch.manual_seed(gen_seed)  # NodeLoader shuffles with torch's global RNG
    loader = _loader(task, config.fanouts, task.train_idx, config.batch_size, True, gen_seed)
    total = len(loader) if config.max_batches is None else min(len(loader), config.max_batches)
    clock, losses, seeds = _Clock(device), [], 0
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not config.progress, leave=False)
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        clock.lap("sample")
        x = _gather(task.features, batch.n_id, device, clock)
        edge_index = batch.edge_index.to(device, non_blocking=True)
        y = batch.y[: batch.batch_size].to(device, non_blocking=True)
        clock.lap("transfer")
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, edge_index)[: batch.batch_size], y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        clock.lap("compute")
        seeds += int(batch.batch_size)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step + 1 >= total:
            break
    bar.close()
    wall = time.perf_counter() - start
    return EpochStats(epoch=epoch, loss=sum(losses) / max(len(losses), 1), seconds=clock.seconds,
                      seeds_per_s=seeds / max(wall, 1e-9))


@torch.no_grad()
def accuracy(model: nn.Module, task: NodeTask, nodes: Tensor, config: GCNTrainConfig,
             device: torch.device, desc: str = "accuracy") -> float:
    """Accuracy on ``nodes``, predicting each from (nearly) its full neighbourhood."""
    model.eval()
    fanouts = [config.eval_fanout] * len(config.fanouts)
    correct = 0
    batches = _loader(task, fanouts, nodes, 512, False, config.seed)
    for batch in tqdm(batches, desc=desc, total=-(-int(nodes.numel()) // 512), disable=not config.progress,
                      leave=False):
        x = task.features.gather(batch.n_id).to(device)
        out = model(x, batch.edge_index.to(device))[: batch.batch_size]
        correct += int((out.argmax(-1).cpu() == batch.y[: batch.batch_size]).sum())
    return correct / max(int(nodes.numel()), 1)


def train_gcn(config: GCNTrainConfig, task: NodeTask, model: nn.Module | None = None) -> GCNResult:
    """Train on ``task.train_idx``; keep the epoch with the best validation accuracy; test it once."""
    if not task.train_idx.numel():
        raise InputError("train_idx", "no training nodes: the train split is empty (too few labelled nodes "
                                      "for the split fractions?)")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    if model is None:
        model = build_model(config.model, task.features.dim, config.hidden, task.num_classes,
                            len(config.fanouts), config.dropout)
    check_feature_width(model, task.features)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[EpochStats] = []
    best = BestState(model)
    for epoch in range(1, config.epochs + 1):
        stats = _train_epoch(model, task, opt, config, device, epoch)
        if config.evaluate and task.val_idx.numel():
            stats.val_acc = accuracy(model, task, task.val_idx, config, device, f"epoch {epoch} val accuracy")
            best.offer(stats.val_acc, epoch)
        history.append(stats)
    if not config.evaluate or not task.val_idx.numel():
        return GCNResult(model, config.epochs, None, None, history)
    best.restore()
    test_acc = None
    if task.test_idx.numel():
        test_acc = accuracy(model, task, task.test_idx, config, device, "test accuracy")
    return GCNResult(model, best.step, best.score, test_acc, history)
