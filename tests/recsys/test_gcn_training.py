"""Sampled GCN training: it learns a planted signal, reports the time breakdown, and rejects bad input."""

from __future__ import annotations

import pytest
import torch

from recsys.gcn.features import NodeFeatureStore
from recsys.gcn.sampler import CSRGraph
from recsys.gcn.tasks import load_task, planetoid_task
from recsys.gcn.training import PHASES, GCNTrainConfig, NodeTask, build_model, train_gcn
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError


def planted_task(n: int = 300, dim: int = 16, classes: int = 3, mode: str = "zero-copy") -> NodeTask:
    """Homophilous random graph: 90% of a node's in-edges come from its own class; noisy class features."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=gen)
    dst = torch.randint(0, n, (8 * n,), generator=gen)
    same = torch.rand(8 * n, generator=gen) < 0.9
    by_class = [torch.nonzero(y == c).view(-1) for c in range(classes)]
    src = torch.randint(0, n, (8 * n,), generator=gen)
    for c in range(classes):
        pick = same & (y[dst] == c)
        src[pick] = by_class[c][torch.randint(0, len(by_class[c]), (int(pick.sum()),), generator=gen)]
    centers = torch.randn(classes, dim, generator=gen)
    x = 0.6 * centers[y] + torch.randn(n, dim, generator=gen)
    perm = torch.randperm(n, generator=gen)
    return NodeTask(graph=CSRGraph.from_edge_index(torch.stack([src, dst]), n),
                    features=NodeFeatureStore(x, mode=mode, device="cpu"), labels=y,
                    train_idx=perm[:150], val_idx=perm[150:200], test_idx=perm[200:], num_classes=classes)


@pytest.mark.parametrize("model", ["sage", "gcn"])
def test_learns_planted_classes(model: str) -> None:
    task = planted_task()
    config = GCNTrainConfig(model=model, hidden=32, epochs=15, batch_size=32, device="cpu", progress=False)
    result = train_gcn(config, task)
    assert result.test_acc is not None and result.test_acc > 0.75  # chance is ~0.33
    assert 1 <= result.best_epoch <= 15
    assert result.history[-1].loss < result.history[0].loss
    for stats in result.history:
        assert set(stats.seconds) == set(PHASES) and all(v >= 0 for v in stats.seconds.values())
        assert stats.seeds_per_s > 0


def test_feature_store_modes_train_identically_on_cpu() -> None:
    config = GCNTrainConfig(hidden=16, epochs=2, batch_size=50, device="cpu", progress=False, evaluate=False)
    losses = [train_gcn(config, planted_task(mode=m)).history[-1].loss for m in ("zero-copy", "cpu-copy")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_feature_width_mismatch_is_a_clear_error() -> None:
    task = planted_task(dim=16)
    model = build_model("sage", 100, 8, 3, 2, 0.0)
    with pytest.raises(InputError, match="feature width 16 does not match the model, which expects 100"):
        train_gcn(GCNTrainConfig(epochs=1, device="cpu", progress=False), task, model=model)


def test_out_of_range_split_ids_are_rejected() -> None:
    task = planted_task()
    with pytest.raises(InputError, match=r"train_idx: node ids must lie in \[0, 300\)"):
        NodeTask(task.graph, task.features, task.labels, torch.tensor([0, 300]), task.val_idx, task.test_idx,
                 num_classes=3)


def test_boolean_split_masks_select_their_nodes() -> None:
    """PyG's masks as splits: accuracy is over the selected nodes, not over every entry of the mask."""
    task = planted_task()
    masks = [torch.zeros(300, dtype=torch.bool) for _ in range(3)]
    for mask, ids in zip(masks, (task.train_idx, task.val_idx, task.test_idx), strict=True):
        mask[ids] = True
    masked = NodeTask(task.graph, task.features, task.labels, *masks, num_classes=3)
    for got, ids in zip((masked.train_idx, masked.val_idx, masked.test_idx),
                        (task.train_idx, task.val_idx, task.test_idx), strict=True):
        assert torch.equal(got, ids.sort().values)
    config = GCNTrainConfig(hidden=32, epochs=10, batch_size=32, device="cpu", progress=False)
    assert train_gcn(config, masked).test_acc > 0.75


@pytest.mark.parametrize(("ids", "match"), [
    (torch.tensor([3, 5, 3]), "train_idx: node ids must be distinct"),
    (torch.tensor([1.0, 2.0]), "train_idx: node ids must be integers"),
    (torch.zeros(5, dtype=torch.bool), "train_idx: boolean mask has 5 entries but the graph has 300 nodes"),
    (torch.zeros(2, 2, dtype=torch.long), "train_idx: must be a 1-D tensor"),
])
def test_bad_split_ids_are_rejected_up_front(ids: torch.Tensor, match: str) -> None:
    task = planted_task()
    with pytest.raises(InputError, match=match):
        NodeTask(task.graph, task.features, task.labels, ids, task.val_idx, task.test_idx, num_classes=3)


def test_fanout_minus_one_takes_every_neighbour_as_documented() -> None:
    assert GCNTrainConfig(fanouts=(10, -1), device="cpu").fanouts == (10, -1)
    for bad in ((10, 0), (-2,), (), (1.5,)):
        with pytest.raises(InputError, match="fanouts: need one positive integer or -1"):
            GCNTrainConfig(fanouts=bad, device="cpu")
    config = GCNTrainConfig(fanouts=(-1, -1), hidden=8, epochs=1, batch_size=100, device="cpu",
                            progress=False, evaluate=False)
    assert train_gcn(config, planted_task()).history[0].loss > 0


def test_empty_train_split_is_named() -> None:
    task = planted_task()
    empty = NodeTask(task.graph, task.features, task.labels, torch.zeros(0, dtype=torch.long), task.val_idx,
                     task.test_idx, num_classes=3)
    with pytest.raises(InputError, match="train_idx: no training nodes"):
        train_gcn(GCNTrainConfig(epochs=1, device="cpu", progress=False), empty)


@pytest.mark.parametrize(("split", "label"), [("train_idx", 3), ("train_idx", -1), ("val_idx", -1)])
def test_split_nodes_need_a_class_label(split: str, label: int) -> None:
    """A label outside [0, num_classes) crashed cross_entropy ('Target 3 is out of bounds') in training,
    and in val / test silently counted as a wrong prediction."""
    task = planted_task()
    labels = task.labels.clone()
    labels[getattr(task, split)[0]] = label
    with pytest.raises(InputError, match=f"{split}: selects a node labelled {label}"):
        NodeTask(task.graph, task.features, labels, task.train_idx, task.val_idx, task.test_idx,
                 num_classes=3)


def test_config_rejects_unknown_names() -> None:
    with pytest.raises(InputError, match="model"):
        GCNTrainConfig(model="gat")
    with pytest.raises(InputError, match="feature_store"):
        GCNTrainConfig(feature_store="uva")
    with pytest.raises(InputError, match="fanouts"):
        GCNTrainConfig(fanouts=(10, 0))
    for seed in (-1, 10**15):  # named with the value given, before any data loads
        with pytest.raises(InputError, match=rf"^seed: .*got {seed}"):
            GCNTrainConfig(seed=seed, device="cpu")


def test_load_task_names_an_unknown_folder(tmp_path) -> None:
    with pytest.raises(InputError, match="not a graph"):
        load_task(tmp_path)


@pytest.mark.data
def test_cora_short_run_beats_chance_by_far() -> None:
    root = dataset_path("planetoid")
    if root is None:
        pytest.skip("planetoid data not found under the data root (set SPARSEKIT_DATA)")
    task = planetoid_task(root, device="cpu")
    assert (task.train_idx.numel(), task.val_idx.numel(), task.test_idx.numel()) == (140, 500, 1000)
    result = train_gcn(GCNTrainConfig(epochs=8, device="cpu", progress=False), task)
    assert result.test_acc > 0.7  # 7 classes; the 5-seed, 30-epoch figure is in benchmarks/gcn_gather.py
