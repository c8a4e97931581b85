"""Bi-granular index: memmap re-score vs brute force, reopen, corrupt or missing vector files, registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import open_index
from retrieval.index.bigranular import (
    CODES_FILE,
    VECTORS_FILE,
    BiGranularConfig,
    BiGranularIndex,
    VectorStore,
    build_bigranular_index,
    top_k,
)
from sparsekit.errors import ArtifactError, InputError

DIM = 16
CONFIG = BiGranularConfig(codes="PQ4x4", candidates=40, dtype="float16")


def random_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FixedEncoder:
    """Maps each known text to a fixed vector (tests only)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray]:
    return [f"d{i}" for i in range(400)], random_vectors(400)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data) -> Path:
    out = tmp_path_factory.mktemp("bigranular") / "index"
    return build_bigranular_index(None, out, CONFIG, vectors=data, progress=False)


ENCODER = FixedEncoder({"first query": random_vectors(1, seed=11)[0],
                        "second query": random_vectors(1, seed=12)[0]})


def test_vector_store_round_trips_and_gathers_rows_in_the_order_asked(tmp_path: Path, data) -> None:
    _, matrix = data
    for dtype in ("float16", "float32"):
        VectorStore.write(matrix, tmp_path / dtype, dtype, chunk=64, progress=False)
        store = VectorStore.open(tmp_path / dtype, 400, DIM, dtype)
        rows = np.array([399, 3, 250, 3, 0])
        assert np.array_equal(store.gather(rows), matrix[rows].astype(dtype).astype(np.float32))
        assert store.bytes == 400 * DIM * np.dtype(dtype).itemsize


def test_memmap_rescore_equals_brute_force_on_the_candidates(built: Path, data) -> None:
    _, matrix = data
    index = BiGranularIndex.open(built, encoder=ENCODER)
    queries = random_vectors(6, seed=5)
    _, cand = index.coarse(queries)
    scores, rows = index.search_vectors(queries, 10)
    stored = matrix.astype(np.float16).astype(np.float32)
    for i, q in enumerate(queries):
        found = cand[i][cand[i] >= 0]
        assert np.allclose(index.store.rescore(q, found), stored[found] @ q, rtol=1e-6, atol=1e-6)
        brute = stored[found] @ q
        order = np.lexsort((found, -brute))[:10]
        assert np.array_equal(rows[i], found[order])
        assert np.allclose(scores[i], brute[order], atol=1e-6)
    assert cand.shape == (6, CONFIG.candidates)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_blocked_rescore_equals_unblocked_and_brute_force(tmp_path: Path, dtype: str) -> None:
    """Block sizes that do not divide the candidate count (1000 = 15 x 64 + 40; 129 = 2 x 64 + 1) give the
    scores of one product over all rows (up to float32 summation order inside BLAS)."""
    matrix = random_vectors(3000, dim=384, seed=3)
    VectorStore.write(matrix, tmp_path / "v.bin", dtype, progress=False)
    store = VectorStore.open(tmp_path / "v.bin", 3000, 384, dtype)
    stored = matrix.astype(dtype).astype(np.float32)
    rng = np.random.default_rng(4)
    counts = (1000, 997, 129, 33, 1)
    for query, count in zip(random_vectors(len(counts), dim=384, seed=5), counts, strict=True):
        rows = rng.choice(3000, count, replace=False)
        unblocked = store.rescore(query, rows, block=count)
        assert np.allclose(unblocked, stored[rows] @ query, rtol=1e-6, atol=1e-6)
        for block in (64, 128):
            assert np.allclose(store.rescore(query, rows, block=block), unblocked, rtol=1e-6, atol=1e-6)
    assert store.rescore(query, np.array([], dtype=np.int64)).shape == (0,)


def test_rescore_rejects_rows_outside_the_store_and_bad_blocks(built: Path) -> None:
    store = BiGranularIndex.open(built).store
    query = random_vectors(1, seed=9)[0]
    for rows in ([0, 400], [-1, 3]):
        with pytest.raises(InputError, match="rows"):
            store.rescore(query, np.array(rows))
    with pytest.raises(InputError, match="block"):
        store.rescore(query, np.array([1, 2]), block=0)


def test_all_candidates_give_the_exact_ranking(tmp_path: Path, data) -> None:
    config = BiGranularConfig(codes="PQ4x4", candidates=400, dtype="float32")
    path = build_bigranular_index(None, tmp_path / "ix", config, vectors=data, progress=False)
    queries = random_vectors(5, seed=6)
    _, rows = BiGranularIndex.open(path).search_vectors(queries, 10)
    assert np.array_equal(rows, np.argsort(-(queries @ data[1].T), axis=1)[:, :10])


def test_more_candidates_never_lose_recall(built: Path, data) -> None:
    queries = random_vectors(30, seed=7)
    truth = np.argsort(-(queries @ data[1].T), axis=1)[:, :10]
    recall = []
    for c in (10, 40, 400):
        _, rows = BiGranularIndex.open(built, candidates=c).search_vectors(queries, 10)
        recall.append(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth, strict=True)]))
    assert recall[0] <= recall[1] <= recall[2] == 1.0


def test_index_built_closed_and_reopened_returns_identical_results(built: Path) -> None:
    queries = random_vectors(4, seed=8)
    with BiGranularIndex.open(built, encoder=ENCODER) as index:
        before = index.search_vectors(queries, 10)
        hits = index.batch_search(["first query", "second query"], k=5)
    reopened = open_index(built)
    assert isinstance(reopened, BiGranularIndex)
    reopened.queries._encoder = ENCODER
    after = reopened.search_vectors(queries, 10)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert reopened.batch_search(["first query", "second query"], k=5) == hits
    assert reopened.search("second query", k=5) == hits[1]
    assert [d for d, _ in hits[0]] == [f"d{r}" for r in BiGranularIndex.open(built).search_vectors(
        ENCODER.encode(["first query"]), 5)[1][0]]


def test_manifest_records_sizes_and_codes(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["params"]["codes"] == "PQ4x4" and manifest["params"]["candidates"] == 40
    assert manifest["counts"]["vector_bytes"] == 400 * DIM * 2
    assert manifest["counts"]["code_bytes"] == 2  # 4 sub-quantizers x 4 bits
    assert manifest["params"]["query_encoder"]["kind"] == "minilm"


def copy_index(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_vector_file_is_named(built: Path, tmp_path: Path) -> None:
    path = copy_index(built, tmp_path / "ix")
    (path / VECTORS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*missing"):
        BiGranularIndex.open(path)
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*missing"):
        BiGranularIndex.open(path, verify=False)


def test_corrupt_vector_file_is_named(built: Path, tmp_path: Path) -> None:
    path = copy_index(built, tmp_path / "ix")
    data = bytearray((path / VECTORS_FILE).read_bytes())
    data[10] ^= 0x55
    (path / VECTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*checksum"):
        BiGranularIndex.open(path)


def test_truncated_vector_file_is_named_even_without_checksums(built: Path, tmp_path: Path) -> None:
    path = copy_index(built, tmp_path / "ix")
    with open(path / VECTORS_FILE, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*size"):
        BiGranularIndex.open(path, verify=False)


def test_non_finite_stored_vectors_are_reported_at_search(built: Path, tmp_path: Path) -> None:
    path = copy_index(built, tmp_path / "ix")
    stored = np.memmap(path / VECTORS_FILE, dtype=np.float16, mode="r+", shape=(400, DIM))
    stored[:] = np.nan
    stored.flush()
    del stored
    index = BiGranularIndex.open(path, verify=False)
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*non-finite"):
        index.search_vectors(random_vectors(1, seed=9), 5)


def test_missing_codes_file_is_named(built: Path, tmp_path: Path) -> None:
    path = copy_index(built, tmp_path / "ix")
    (path / CODES_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"codes\.faiss"):
        BiGranularIndex.open(path, verify=False)


def test_bad_inputs(tmp_path: Path, data) -> None:
    ids, matrix = data
    with pytest.raises(InputError, match="overflow"):
        build_bigranular_index(None, tmp_path / "a", CONFIG, vectors=(ids, matrix * 1e6), progress=False)
    with pytest.raises(InputError, match="dtype"):
        build_bigranular_index(None, tmp_path / "b", BiGranularConfig(dtype="int8"), vectors=data,
                               progress=False)
    with pytest.raises(InputError, match="candidates"):
        build_bigranular_index(None, tmp_path / "c", BiGranularConfig(candidates=0), vectors=data,
                               progress=False)
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_ivf_codes_and_opq_rotation(tmp_path: Path, data) -> None:
    config = BiGranularConfig(codes="OPQ4,IVF4,PQ4x4", candidates=100, nprobe=4, dtype="float32")
    path = build_bigranular_index(None, tmp_path / "ix", config, vectors=data, progress=False)
    queries = data[1][:20]
    _, rows = BiGranularIndex.open(path).search_vectors(queries, 1)
    assert np.array_equal(rows[:, 0], np.arange(20))  # each vector finds itself after exact re-score


def test_reduced_dimension_opq_and_4_bit_codes(tmp_path: Path, data) -> None:
    """The compact code config (OPQ to fewer dimensions, 4-bit PQ) builds, stores its code size, re-scores."""
    config = BiGranularConfig(codes="OPQ4_8,PQ4x4", candidates=100, dtype="float16")
    path = build_bigranular_index(None, tmp_path / "ix", config, vectors=data, progress=False)
    index = BiGranularIndex.open(path)
    assert index.manifest.counts["code_bytes"] == 2 and index.codes.d == DIM
    _, rows = index.search_vectors(data[1][:20], 1)
    assert np.array_equal(rows[:, 0], np.arange(20))


def test_top_k_orders_by_score_then_row() -> None:
    scores, rows = top_k(np.array([0.5, 0.9, 0.5, 0.1]), np.array([7, 3, 2, 9]), 3)
    assert rows.tolist() == [3, 2, 7] and scores.tolist() == [0.9, 0.5, 0.5]


def test_opq_on_fewer_vectors_than_dimensions_is_an_input_error_not_a_crash(tmp_path: Path) -> None:
    """faiss aborts the whole process when OPQ trains on fewer vectors than dimensions; we refuse first."""
    vectors = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    ids = [f"d{i}" for i in range(40)]
    with pytest.raises(InputError, match="OPQ needs at least 64 training vectors, got 40"):
        build_bigranular_index(None, tmp_path / "ix", BiGranularConfig(codes="OPQ4,PQ4x4"),
                               vectors=(ids, vectors), progress=False)
    assert not (tmp_path / "ix").exists()


def test_k_above_the_candidate_count_still_returns_k_hits(built: Path, data) -> None:
    """C bounds the re-scoring work, not the answer: k > C must not silently return only C hits."""
    index = BiGranularIndex.open(built, candidates=5, encoder=ENCODER)
    scores, rows = index.search_vectors(random_vectors(2, seed=9), 20)
    assert (rows >= 0).all() and np.all(np.diff(scores, axis=1) <= 0)
    assert len(index.search("first query", k=20)) == 20
    assert len(index.search("first query", k=1000)) == len(data[0])  # k past the corpus: every document
    _, rows = index.search_vectors(random_vectors(2, seed=9), 10**12)  # capped: no [2, 10**12] arrays
    assert rows.shape == (2, len(data[0])) and (rows >= 0).all()
