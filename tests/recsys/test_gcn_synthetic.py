"""The synthetic graph generator: exact simple-graph edge counts in an in-neighbour CSR, power-law degrees,
planted homophilous classes whose features reward neighbourhood aggregation, memmapped features that do
not depend on the chunk size, seeded output, bad parameters named, and atomic writes (a failed or killed
run leaves nothing at the target).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import recsys.gcn.synthetic as synthetic
from recsys.gcn.sampler import NeighborSampler
from recsys.gcn.synthetic import generate_graph, open_graph
from sparsekit.errors import ArtifactError, InputError

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_nodes": 3000, "num_edges": 30_000, "feature_dim": 16, "num_classes": 4}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticGraph:
    return generate_graph(tmp_path_factory.mktemp("g") / "graph", **SMALL, seed=7, progress=False)


def _edges(g: synthetic.SyntheticGraph) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of every edge, from the in-neighbour CSR."""
    dst = np.repeat(np.arange(g.num_nodes), g.graph.in_degree().numpy())
    return g.graph.indices.numpy().astype(np.int64), dst


def test_graph_is_simple_with_exact_counts_and_documented_dtypes(small: synthetic.SyntheticGraph) -> None:
    assert (small.num_nodes, small.num_edges, small.feature_dim) == (3000, 30_000, 16)
    assert small.graph.indptr.dtype == torch.int64 and small.graph.indices.dtype == torch.int32
    assert isinstance(small.features, np.memmap) and small.features.dtype == np.float32
    assert small.features.shape == (3000, 16) and not small.features.flags.writeable
    assert small.labels.dtype == torch.int64 and set(small.labels.unique().tolist()) == {0, 1, 2, 3}
    src, dst = _edges(small)
    assert not np.any(src == dst)
    assert np.unique(dst * small.num_nodes + src).size == small.num_edges


def _hill_exponent(degrees: np.ndarray, k: int = 150) -> float:
    d = np.sort(degrees)[::-1].astype(np.float64)
    return 1.0 + k / float(np.sum(np.log(d[:k] / d[k])))


def test_in_and_out_degrees_follow_the_power_law(small: synthetic.SyntheticGraph) -> None:
    src, dst = _edges(small)
    for degrees in (np.bincount(dst, minlength=3000), np.bincount(src, minlength=3000)):
        assert degrees.max() > 20 * degrees.mean()  # heavy tail, not Erdős–Rényi
        assert 2.0 < _hill_exponent(degrees) < 3.2  # target exponent 2.5


def test_node_ids_carry_no_degree_order(small: synthetic.SyntheticGraph) -> None:
    degree = small.graph.in_degree().numpy().astype(np.float64)
    assert abs(np.corrcoef(degree, np.arange(small.num_nodes))[0, 1]) < 0.1


def test_classes_are_homophilous_and_aggregation_beats_the_node_alone(
    small: synthetic.SyntheticGraph,
) -> None:
    src, dst = _edges(small)
    y = small.labels.numpy()
    share = np.bincount(y) / y.size
    expected = 0.8 + 0.2 * float(np.sum(share**2))
    assert abs(np.mean(y[src] == y[dst]) - expected) < 0.03
    x = np.asarray(small.features, dtype=np.float64)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    assert np.allclose(np.linalg.norm(means, axis=1), 1.0, atol=0.15)  # signal = 1
    agg = np.zeros_like(x)
    np.add.at(agg, dst, x[src])
    agg = (agg + x) / (np.bincount(dst, minlength=y.size) + 1)[:, None]

    def accuracy(h: np.ndarray) -> float:
        return float(np.mean(np.argmin(((h[:, None, :] - means[None]) ** 2).sum(-1), axis=1) == y))

    alone, aggregated = accuracy(x), accuracy(agg)
    assert alone > 0.3 and aggregated > alone + 0.15


def test_same_seed_same_graph_other_seed_other_graph(tmp_path: Path, small: synthetic.SyntheticGraph) -> None:
    again = generate_graph(tmp_path / "again", **SMALL, seed=7, progress=False)
    other = generate_graph(tmp_path / "other", **SMALL, seed=8, progress=False)
    for name in synthetic.FILES.values():
        assert (again.path / name).read_bytes() == (small.path / name).read_bytes()
    assert not torch.equal(other.graph.indices, small.graph.indices)
    assert not np.array_equal(other.features, small.features)


def test_features_do_not_depend_on_the_chunk_size(tmp_path: Path, small: synthetic.SyntheticGraph,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "FEATURE_CHUNK_BYTES", 16 * 4 * 37)  # 37 rows a chunk
    monkeypatch.setattr(synthetic, "EDGE_CHUNK", 4096)
    chunked = generate_graph(tmp_path / "chunked", **SMALL, seed=7, progress=False)
    assert np.array_equal(chunked.features, small.features)
    assert torch.equal(chunked.labels, small.labels)
    assert chunked.num_edges == small.num_edges and not np.any(_edges(chunked)[0] == _edges(chunked)[1])


def test_sampler_runs_on_the_generated_csr(small: synthetic.SyntheticGraph) -> None:
    out = NeighborSampler(small.graph, [10, 5], seed=0).sample(torch.arange(64))
    src, dst = out.node[out.row], out.node[out.col]
    graph = small.graph
    assert torch.equal(graph.indices[out.edge].long(), src)
    assert bool(((graph.indptr[dst] <= out.edge) & (out.edge < graph.indptr[dst + 1])).all())


def test_open_graph_checks_the_artifact(tmp_path: Path) -> None:
    g = generate_graph(tmp_path / "g", num_nodes=50, num_edges=200, feature_dim=4, progress=False)
    assert open_graph(g.path, verify=True).num_edges == 200
    with open(g.path / "labels.npy", "r+b") as fh:  # same size, different bytes
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x07")
    with pytest.raises(ArtifactError, match="checksum"):
        open_graph(g.path, verify=True)
    with pytest.raises(ArtifactError, match="no such artifact"):
        open_graph(tmp_path / "absent")
    with pytest.raises(ArtifactError, match="already exists"):
        generate_graph(g.path, num_nodes=50, num_edges=200, feature_dim=4, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"num_nodes": 1}, "num_nodes"),
        ({"num_edges": 50 * 49 // 2 + 1}, "num_edges"),
        ({"num_edges": -1}, "num_edges"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"num_classes": 0}, "num_classes"),
        ({"degree_exponent": 1.0}, "degree_exponent"),
        ({"homophily": 1.5}, "homophily"),
        ({"signal": -1.0}, "signal"),
    ],
)
def test_bad_parameters_raise_input_error(tmp_path: Path, kwargs: dict, source: str) -> None:
    args = {"num_nodes": 50, "num_edges": 100, "feature_dim": 4, **kwargs}
    with pytest.raises(InputError) as info:
        generate_graph(tmp_path / "g", **args, progress=False)
    assert info.value.source == source
    assert not (tmp_path / "g").exists()


def test_failed_write_leaves_the_published_graph_untouched(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "g"
    before = generate_graph(target, num_nodes=100, num_edges=500, feature_dim=8, seed=1, progress=False)
    features = np.array(before.features)

    def crash(fh, *args, **kwargs) -> None:
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_features", crash)
    with pytest.raises(OSError, match="disk full"):
        generate_graph(target, num_nodes=100, num_edges=500, feature_dim=8, seed=2, overwrite=True,
                       progress=False)
    assert np.array_equal(open_graph(target, verify=True).features, features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_killed_run_leaves_no_graph(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        import recsys.gcn.synthetic as synthetic

        def stall(fh, *args, **kwargs):
            fh.write(b"half a table")
            fh.flush()
            print("writing", flush=True)
            time.sleep(600)

        synthetic._write_features = stall
        synthetic.generate_graph({str(tmp_path / "g")!r}, 100, 500, 8, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ArtifactError):
        open_graph(tmp_path / "g")
    assert generate_graph(tmp_path / "g", 100, 500, 8, progress=False).num_edges == 500


def test_a_graph_left_only_as_its_backup_by_a_crash_mid_replace_still_loads(tmp_path) -> None:
    """load_task probed for manifest.json itself, so such a graph read as "not a graph"."""
    from recsys.gcn.tasks import load_task
    from sparsekit.atomic import temp_sibling

    path = tmp_path / "graph"
    generate_graph(path, **SMALL, seed=7, progress=False)
    os.rename(path, temp_sibling(path, "old"))
    task = load_task(path, mode="cpu-copy", device="cpu")
    assert task.graph.num_nodes == SMALL["num_nodes"] and (path / "manifest.json").is_file()
