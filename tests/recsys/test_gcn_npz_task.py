"""A graph of your own as one .npz (recsys.gcn.tasks.npz_task): PyG array names, optional masks, a
seeded split of the labelled nodes, undirected edges, clear errors, and training on it end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.gcn.tasks import load_task, npz_task
from recsys.gcn.training import GCNTrainConfig, train_gcn
from sparsekit.errors import InputError


def _graph(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Two planted communities: dense edges inside, few across; noisy features that hint at the class."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) >= n // 2).astype(np.int64)
    src = rng.integers(0, n, 6 * n)
    same = rng.random(6 * n) < 0.9
    dst = np.where(same, (src + rng.integers(1, n // 2, 6 * n)) % (n // 2) + (y[src] * (n // 2)),
                   rng.integers(0, n, 6 * n))
    x = rng.normal(size=(n, 8)).astype(np.float32) + 0.4 * y[:, None]
    return {"x": x, "edge_index": np.stack([src, dst]), "y": y}


def test_an_npz_graph_trains_past_chance(tmp_path: Path) -> None:
    path = tmp_path / "g.npz"
    np.savez(path, **_graph())
    task = load_task(path, mode="cpu-copy", device="cpu")
    result = train_gcn(GCNTrainConfig(model="sage", fanouts=(5, 5), epochs=5, batch_size=64, device="cpu",
                                       progress=False), task)
    assert result.test_acc > 0.8


def test_labelled_nodes_are_split_by_seed_and_edges_made_undirected(tmp_path: Path) -> None:
    arrays = _graph(100)
    arrays["y"][:10] = -1  # unlabelled
    np.savez(tmp_path / "g.npz", **arrays)
    a = npz_task(tmp_path / "g.npz", mode="cpu-copy", device="cpu", seed=1)
    b = npz_task(tmp_path / "g.npz", mode="cpu-copy", device="cpu", seed=1)
    parts = [a.train_idx, a.val_idx, a.test_idx]
    assert all(torch.equal(p, q) for p, q in zip(parts, [b.train_idx, b.val_idx, b.test_idx], strict=True))
    ids = torch.cat(parts)
    assert ids.unique().numel() == ids.numel() == 90 and int(ids.min()) >= 10  # labelled only, disjoint
    assert [p.numel() for p in parts] == [54, 18, 18]
    edges = {(int(s), int(d)) for s, d in arrays["edge_index"].T}
    both = edges | {(d, s) for s, d in edges}
    assert a.graph.indices.numel() == len(both)  # each direction once
    one_way = npz_task(tmp_path / "g.npz", mode="cpu-copy", device="cpu", undirected=False)
    assert one_way.graph.indices.numel() == len(edges)


def test_masks_given_in_the_file_are_used(tmp_path: Path) -> None:
    arrays = _graph(50)
    masks = {m: np.zeros(50, bool) for m in ("train_mask", "val_mask", "test_mask")}
    masks["train_mask"][:5], masks["val_mask"][5:8], masks["test_mask"][40:] = True, True, True
    np.savez(tmp_path / "g.npz", **arrays, **masks)
    task = npz_task(tmp_path / "g.npz", mode="cpu-copy", device="cpu")
    assert task.train_idx.tolist() == [0, 1, 2, 3, 4] and task.test_idx.tolist() == list(range(40, 50))


@pytest.mark.parametrize(("change", "match"), [
    (lambda a: a.pop("y"), r"missing array\(s\) \['y'\]"),
    (lambda a: a.update(x=a["x"][:, 0]), "x must be a numeric"),
    (lambda a: a.update(y=a["y"][:-1]), "y must be integer"),
    (lambda a: a.update(edge_index=a["edge_index"].T), "edge_index must be an integer"),
    (lambda a: a.update(edge_index=a["edge_index"] + 30), r"outside \[0, 50\)"),
    (lambda a: a["x"].__setitem__((3, 2), np.nan), "NaN"),
    (lambda a: a.update(y=np.full(50, -1)), "no node is labelled"),
    (lambda a: a.update(y=np.where(np.arange(50) == 0, -1, a["y"]), train_mask=np.arange(50) < 5,
                        val_mask=np.zeros(50, bool), test_mask=np.zeros(50, bool)), "unlabelled"),
    (lambda a: a.update(train_mask=np.ones(50), val_mask=np.ones(50, bool), test_mask=np.ones(50, bool)),
     "train_mask must be a boolean"),
    (lambda a: a.update(train_mask=np.ones(50, bool)), "give all three masks, or none"),
    (lambda a: a.update(train_mask=np.arange(50) < 40, val_mask=np.arange(50) == 45,
                        test_mask=np.arange(50) < 10), "test_idx: shares node 0 with train_idx"),  # leak
    (lambda a: a.update(x=np.array([object()] * 50)), "cannot read the graph"),
])
def test_bad_graph_files_get_errors_that_name_the_problem(tmp_path: Path, change, match: str) -> None:
    arrays = _graph(50)
    change(arrays)
    np.savez(tmp_path / "g.npz", **arrays)
    with pytest.raises(InputError, match=match):
        npz_task(tmp_path / "g.npz", mode="cpu-copy", device="cpu")


def test_a_truncated_npz_and_an_unknown_device_are_input_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "g.npz", **_graph(50))
    data = (tmp_path / "g.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"not a complete \.npz"):
        npz_task(tmp_path / "cut.npz", mode="cpu-copy", device="cpu")
    (tmp_path / "table.npz").write_text("a,b\n1,2\n")  # a CSV under an .npz name
    with pytest.raises(InputError, match=r"not a complete \.npz archive"):
        npz_task(tmp_path / "table.npz", mode="cpu-copy", device="cpu")
    with pytest.raises(InputError, match=r"nope\.npz: no such file"):
        npz_task(tmp_path / "nope.npz", mode="cpu-copy", device="cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        npz_task(tmp_path / "g.npz", mode="cpu-copy", device="tpu")


def test_cli_no_evaluate_trains_without_the_accuracy_passes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    np.savez(tmp_path / "g.npz", **_graph(100))
    args = ["train", "gcn", "--data", str(tmp_path / "g.npz"), "--epochs", "1", "--device", "cpu",
            "--feature-store", "cpu-copy", "--report", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, [*args, "--no-evaluate"])
    assert result.exit_code == 0, result.output
    assert "test acc" not in result.output
    assert '"test_acc": null' in (tmp_path / "r.json").read_text()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test acc" in result.output


def test_cli_refuses_a_report_path_under_a_file_before_training(tmp_path: Path) -> None:
    """A file higher up the --report path would only fail the write after training: refused first."""
    from typer.testing import CliRunner

    from services.cli import app

    np.savez(tmp_path / "g.npz", **_graph(100))
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    args = ["train", "gcn", "--data", str(tmp_path / "g.npz"), "--epochs", "1", "--device", "cpu",
            "--feature-store", "cpu-copy", "--report", str(tmp_path / "corpus.jsonl" / "sub" / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # rich wraps long lines
    assert message.startswith("error: --report:") and "corpus.jsonl is not a directory" in message
    assert "epoch" not in message  # nothing was trained
    assert (tmp_path / "corpus.jsonl").read_text() == "{}\n"
