"""Native sparse engine (``sparse-inverted`` index): exactness, quantization, artifact handling, bad input."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.index.inverted import FORMAT, InvertedIndex, build_inverted_index
from sparsekit.artifacts import MANIFEST
from sparsekit.errors import ArtifactError, InputError


def int_matrix(num_docs: int, vocab: int, density: float, seed: int) -> sp.csr_matrix:
    """Random doc-term matrix with small integer weights: float32 sums are exact, ties are common."""
    rng = np.random.default_rng(seed)
    return sp.random(num_docs, vocab, density=density, format="csr", random_state=rng,
                     data_rvs=lambda n: rng.integers(1, 5, n)).astype(np.float32)


def ids_for(n: int) -> list[str]:
    return [f"doc-{i}" for i in range(n)]


def build_open(matrix: sp.csr_matrix, out: Path, ids: list[str] | None = None,
               quantization: str = "none") -> InvertedIndex:
    ids = ids if ids is not None else ids_for(matrix.shape[0])
    return InvertedIndex.open(build_inverted_index(ids, matrix, out, quantization=quantization))


def brute_force(matrix: sp.csr_matrix, terms: np.ndarray, values: np.ndarray,
                k: int) -> list[tuple[int, float]]:
    """Exact ranking by dense scoring: positive scores, best first, ties by lower doc index."""
    q = np.zeros(matrix.shape[1])
    np.add.at(q, terms, values)
    scores = matrix.astype(np.float64) @ q
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [(int(d), float(scores[d])) for d in order[:k] if scores[d] > 0]


def random_query(rng: np.random.Generator, vocab: int, max_terms: int) -> tuple[np.ndarray, np.ndarray]:
    terms = rng.choice(vocab, size=rng.integers(1, max_terms + 1), replace=False)
    return terms, rng.integers(1, 4, len(terms)).astype(np.float32)


def as_ranked(results: list[tuple[str, float]]) -> list[tuple[int, float]]:
    return [(int(doc_id.split("-")[1]), score) for doc_id, score in results]


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> tuple[sp.csr_matrix, InvertedIndex]:
    """3,000 docs x 400 terms, float32 postings: dense and tracked queries, block filtering."""
    matrix = int_matrix(3000, 400, 0.03, seed=1)
    path = build_inverted_index(ids_for(3000), matrix, tmp_path_factory.mktemp("idx") / "medium",
                                quantization="none")
    return matrix, InvertedIndex.open(path)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("k", [1, 10, 100, 5000])
def test_matches_brute_force_dense_scoring(medium: tuple[sp.csr_matrix, InvertedIndex], k: int) -> None:
    matrix, index = medium
    rng = np.random.default_rng(k)
    for max_terms in (2, 30, 120):  # few postings (tracked) ... most of the corpus (dense scan)
        terms, values = random_query(rng, matrix.shape[1], max_terms)
        assert as_ranked(index.search_sparse(terms, values, k)) == brute_force(matrix, terms, values, k)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_docs=st.integers(1, 2000), vocab=st.integers(1, 60), density=st.floats(0.0, 0.3),
       k=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_matches_brute_force_property(tmp_path: Path, num_docs: int, vocab: int, density: float, k: int,
                                      seed: int) -> None:
    matrix = int_matrix(num_docs, vocab, density, seed)
    index = build_open(matrix, Path(tempfile.mkdtemp(dir=tmp_path)) / "idx")  # one dir per example
    rng = np.random.default_rng(seed)
    for _ in range(3):
        terms, values = random_query(rng, vocab, min(vocab, 10))
        assert as_ranked(index.search_sparse(terms, values, k)) == brute_force(matrix, terms, values, k)


def test_float_weights_match_brute_force_within_rounding(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    matrix = sp.random(800, 100, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    index = build_open(matrix, tmp_path / "f")
    for _ in range(10):
        terms = rng.choice(100, size=8, replace=False)
        values = rng.random(8).astype(np.float32)
        got = as_ranked(index.search_sparse(terms, values, 20))
        want = brute_force(matrix, terms, values, 20)
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)


def test_fewer_matches_than_k_empty_postings_and_empty_query(tmp_path: Path) -> None:
    matrix = sp.csr_matrix(np.array([[0, 2, 0, 0], [1, 0, 0, 0], [0, 3, 0, 0]], dtype=np.float32))
    index = build_open(matrix, tmp_path / "i", ["a", "b", "c"])
    assert index.search_sparse([1], [1.0], 10) == [("c", 3.0), ("a", 2.0)]
    assert index.search_sparse([2, 3], [1.0, 5.0], 10) == []  # terms without postings
    assert index.search_sparse([], [], 10) == []
    assert index.search_sparse([0, 1], [0.0, 0.0], 10) == []  # zero query weights match nothing
    assert index.search_sparse_batch([], 5) == []


def test_empty_corpus(tmp_path: Path) -> None:
    index = build_open(sp.csr_matrix((0, 5), dtype=np.float32), tmp_path / "empty", [])
    assert (index.num_docs, index.vocab_size, index.nnz) == (0, 5, 0)
    assert index.search_sparse([1], [1.0], 3) == []
    assert index.search_sparse_batch([([1], [1.0]), ([], [])], 3, threads=2) == [[], []]


def test_ties_go_to_the_lower_doc_index(tmp_path: Path) -> None:
    matrix = sp.csr_matrix(np.ones((6, 1), dtype=np.float32))
    index = build_open(matrix, tmp_path / "t", list("fedcba"))
    assert [d for d, _ in index.search_sparse([0], [1.0], 4)] == ["f", "e", "d", "c"]


# ---------------------------------------------------------------- quantization


@pytest.mark.parametrize(("quantization", "min_overlap"), [("uint8", 0.8), ("uint16", 0.99)])
def test_quantized_scores_are_within_bound(tmp_path: Path, quantization: str, min_overlap: float) -> None:
    rng = np.random.default_rng(11)
    matrix = sp.random(2000, 300, density=0.04, format="csr", random_state=rng, dtype=np.float32)
    matrix.data *= 3.0
    exact = build_open(matrix, tmp_path / "x")
    quant = build_open(matrix, tmp_path / "q", quantization=quantization)
    assert quant.quantization == quantization
    levels = 255 if quantization == "uint8" else 65535
    assert quant.scale == pytest.approx(float(matrix.data.max()) / levels)
    overlaps = []
    for _ in range(20):
        terms = rng.choice(300, size=12, replace=False)
        values = rng.random(12).astype(np.float32)
        bound = quant.scale * float(np.abs(values).sum())
        got = quant.search_sparse(terms, values, 10)
        q = np.zeros(300)
        q[terms] = values
        true = matrix.astype(np.float64) @ q
        for doc_id, score in got:
            assert abs(score - true[int(doc_id.split("-")[1])]) <= bound + 1e-6
        want = {d for d, _ in exact.search_sparse(terms, values, 10)}
        overlaps.append(len(want & {d for d, _ in got}) / max(1, len(want)))
    assert np.mean(overlaps) >= min_overlap


def test_weights_rounding_to_zero_are_dropped(tmp_path: Path) -> None:
    matrix = sp.csr_matrix(np.array([[255.0, 0.1], [0.6, 100.0]], dtype=np.float32))
    index = build_open(matrix, tmp_path / "z", ["a", "b"], "uint8")  # scale 1
    assert index.nnz == 3
    assert index.search_sparse([1], [1.0], 5) == [("b", 100.0)]
    assert index.search_sparse([0], [1.0], 5) == [("a", 255.0), ("b", 1.0)]


# ---------------------------------------------------------------- batch, threads, text


def test_batch_equals_single_and_threads_agree(medium: tuple[sp.csr_matrix, InvertedIndex]) -> None:
    matrix, index = medium
    rng = np.random.default_rng(5)
    queries = [random_query(rng, matrix.shape[1], 40) for _ in range(40)]
    singles = [index.search_sparse(t, v, 25) for t, v in queries]
    assert index.search_sparse_batch(queries, 25) == singles
    assert index.search_sparse_batch(queries, 25, threads=3) == singles
    rows = sp.csr_matrix((np.concatenate([v for _, v in queries]), np.concatenate([t for t, _ in queries]),
                          np.cumsum([0] + [len(t) for t, _ in queries])), shape=(40, matrix.shape[1]))
    assert index.search_sparse_batch(rows, 25, threads=2) == singles


def test_text_search_uses_the_query_encoder(tmp_path: Path) -> None:
    matrix = int_matrix(50, 10, 0.3, seed=2)
    path = build_inverted_index(ids_for(50), matrix, tmp_path / "e", quantization="none")
    vocab = {f"w{i}": i for i in range(10)}

    def encode(text: str) -> tuple[list[int], list[float]]:
        terms = sorted({vocab[w] for w in text.split() if w in vocab})
        return terms, [1.0] * len(terms)

    index = InvertedIndex.open(path, query_encoder=encode)
    assert index.kind == "sparse"
    assert index.search("w1 w3 unknown", 5) == index.search_sparse([1, 3], [1.0, 1.0], 5)
    expected = [index.search("w1 w3", 5), index.search("w2", 5)]
    assert index.batch_search(["w1 w3", "w2"], 5, threads=2) == expected
    with pytest.raises(ArtifactError, match="query encoder"):
        InvertedIndex.open(path).search("w1", 5)


# ---------------------------------------------------------------- artifact


def test_manifest_and_reopen_give_identical_results(tmp_path: Path) -> None:
    matrix = int_matrix(500, 80, 0.05, seed=3)
    path = build_inverted_index(ids_for(500), matrix, tmp_path / "r", params={"encoder": "test"},
                                source={"corpus": "synthetic"})
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["version"] == 2
    assert manifest["counts"] == {"num_docs": 500, "vocab_size": 80, "nnz": matrix.nnz}
    assert manifest["params"]["quantization"] == "uint8" and manifest["params"]["encoder"] == "test"
    assert manifest["source"] == {"corpus": "synthetic"}
    assert set(manifest["files"]) == {"term_offsets.npy", "postings_docs.npy", "postings_weights.npy",
                                      "doc_ids.bin", "doc_ids.off"}
    queries = [random_query(np.random.default_rng(i), 80, 10) for i in range(10)]
    with InvertedIndex.open(path) as index:
        assert (index.num_docs, index.vocab_size) == (500, 80)
        first = index.search_sparse_batch(queries, 20)
    assert index.num_docs == 0  # closed
    assert InvertedIndex.open(path).search_sparse_batch(queries, 20) == first
    assert InvertedIndex.open(path, mmap=False, verify=False).search_sparse_batch(queries, 20) == first


def test_existing_index_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    matrix = int_matrix(20, 5, 0.5, seed=4)
    path = build_inverted_index(ids_for(20), matrix, tmp_path / "o")
    with pytest.raises(ArtifactError, match="already exists"):
        build_inverted_index(ids_for(20), matrix, path)
    build_inverted_index(ids_for(20), matrix * 2, path, overwrite=True)
    assert InvertedIndex.open(path).num_docs == 20


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_or_missing_files_raise_artifact_error(tmp_path: Path, damage: str) -> None:
    path = build_inverted_index(ids_for(100), int_matrix(100, 30, 0.2, seed=5), tmp_path / "c")
    target = path / "postings_docs.npy"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "delete":
        target.unlink()
    else:
        (path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError):
        InvertedIndex.open(path)


def test_array_inconsistent_with_manifest_is_rejected(tmp_path: Path) -> None:
    path = build_inverted_index(ids_for(10), int_matrix(10, 6, 0.5, seed=6), tmp_path / "m")
    np.save(path / "term_offsets.npy", np.zeros(7, dtype=np.int32))  # wrong dtype, same role
    with pytest.raises(ArtifactError, match="term_offsets"):
        InvertedIndex.open(path, verify=False)


# ---------------------------------------------------------------- bad input


def test_bad_build_input_names_the_field(tmp_path: Path) -> None:
    good = int_matrix(4, 3, 0.9, seed=7)
    bad_value = good.copy()
    bad_value.data[-1] = -1.0
    with pytest.raises(InputError, match=r"negative weight .* row 3 .*doc-3"):
        build_inverted_index(ids_for(4), bad_value, tmp_path / "a")
    bad_value.data[-1] = np.nan
    with pytest.raises(InputError, match="non-finite") as err:
        build_inverted_index(ids_for(4), bad_value, tmp_path / "a")
    assert err.value.source == "vectors"
    with pytest.raises(InputError) as err:
        build_inverted_index(ids_for(3), good, tmp_path / "a")
    assert err.value.source == "doc_ids"
    with pytest.raises(InputError, match="duplicate") as err:
        build_inverted_index(["a", "b", "c", "a"], good, tmp_path / "a")
    assert err.value.source == "doc_ids[3]"
    with pytest.raises(InputError) as err:
        build_inverted_index(ids_for(4), good, tmp_path / "a", quantization="int4")
    assert err.value.source == "quantization"
    with pytest.raises(InputError) as err:
        build_inverted_index(ids_for(4), good.toarray(), tmp_path / "a")
    assert err.value.source == "vectors"
    assert not (tmp_path / "a").exists()


def test_packed_arrays_with_inconsistent_offsets_are_refused(medium: tuple[sp.csr_matrix, InvertedIndex]
                                                               ) -> None:
    _, index = medium
    terms, values = np.array([1, 2, 3], np.int64), np.ones(3, np.float32)
    top = index.search_topk(np.array([0, 1, 3]), terms, values, 5)
    assert top.docs.shape == (2, 5)
    for offsets in ([0, 1, 2], [1, 3], [0, 2, 1, 3], []):  # short of the end, not from 0, going back, empty
        with pytest.raises(InputError, match="offsets"):
            index.search_topk(np.array(offsets, np.int64), terms, values, 5)
    with pytest.raises(InputError, match=r"\(one per term\)"):
        index.search_topk(np.array([0, 3]), terms, values[:2], 5)


def test_bad_queries_name_the_position(medium: tuple[sp.csr_matrix, InvertedIndex]) -> None:
    _, index = medium
    with pytest.raises(InputError, match="out of range") as err:
        index.search_sparse([3, 5, 400], [1.0, 1.0, 1.0], 5)
    assert err.value.source == "query.indices[2]"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2, -1], [1.0, 1.0])], 5)
    assert err.value.source == "queries[1].indices[1]"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2, 3], [1.0, float("nan")])], 5)
    assert err.value.source == "queries[1].values[1]"
    with pytest.raises(InputError) as err:
        index.search_sparse([1, 2], [1.0, -0.5], 5)
    assert err.value.source == "query.values[1]"
    with pytest.raises(InputError) as err:
        index.search_sparse([1, 2], [1.0], 5)
    assert err.value.source == "query.values"
    with pytest.raises(InputError) as err:
        index.search_sparse([1.5], [1.0], 5)
    assert err.value.source == "query.indices"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2.5], [1.0])], 5)
    assert err.value.source == "queries[1].indices"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2], [None])], 5)  # None -> NaN
    assert err.value.source == "queries[1].values[0]"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2], ["heavy"])], 5)
    assert err.value.source == "queries[1].values"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), ([2, 3], [1.0])], 5)
    assert err.value.source == "queries[1].values"
    ok = (np.array([1]), np.array([1.0], np.float32))  # numpy entries take the concatenating path
    objects = (np.array([3, 5], dtype=object), np.array([1.0, 2.0]))  # Python ints in an object array
    assert index.search_sparse_batch([ok, objects], 5)[1] == index.search_sparse([3, 5], [1.0, 2.0], 5)
    for bad, source in [((np.array([2.5]), np.array([1.0])), "queries[1].indices"),
                        ((np.array([[1, 2]]), np.array([1.0])), "queries[1].indices"),
                        ((np.array([2]), np.array(["heavy"])), "queries[1].values"),
                        ((np.array([2, 999]), np.array([1.0, 1.0])), "queries[1].indices[1]")]:
        with pytest.raises(InputError) as err:
            index.search_sparse_batch([ok, bad], 5)
        assert err.value.source == source
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0]), 7], 5)
    assert err.value.source == "queries[1]"
    with pytest.raises(InputError) as err:
        index.search_sparse([1], [1.0], 0)
    assert err.value.source == "k"
    with pytest.raises(InputError) as err:
        index.search_sparse_batch([([1], [1.0])], 5, threads=0)
    assert err.value.source == "threads"


@pytest.mark.gpu
def test_cuda_index_matches_cpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    path = build_inverted_index(ids_for(4000), int_matrix(4000, 200, 0.03, seed=8), tmp_path / "g",
                                quantization="none")  # integer weights: exact sums in any order
    queries = [random_query(np.random.default_rng(i), 200, 40) for i in range(30)]
    cpu = InvertedIndex.open(path).search_sparse_batch(queries, 50)
    gpu = InvertedIndex.open(path, device="cuda").search_sparse_batch(queries, 50)
    assert [[d for d, _ in r] for r in gpu] == [[d for d, _ in r] for r in cpu]
    np.testing.assert_allclose([s for r in gpu for _, s in r], [s for r in cpu for _, s in r], rtol=1e-6)


def test_ids_are_stored_at_their_own_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One 4,000-character id no longer widens every stored id (version 1 kept a fixed-width unicode
    array: 16 KB per document here); hits carry it, through the id cache or decoded one by one."""
    from retrieval.index import inverted

    matrix = int_matrix(300, 40, 0.2, seed=5)
    ids = ids_for(300)
    ids[7] = "https://example.org/" + "x" * 4000
    path = build_inverted_index(ids, matrix, tmp_path / "ix")
    assert (path / "doc_ids.bin").stat().st_size == sum(len(d) for d in ids) < 300 * 40 + 4100
    queries = [random_query(np.random.default_rng(i), 40, 8) for i in range(20)]
    with InvertedIndex.open(path) as index:
        cached = index.search_sparse_batch(queries, 300)
        assert list(index.doc_ids) == ids
    monkeypatch.setattr(inverted, "ID_CACHE_MAX_DOCS", 10)  # past it: ids decoded per hit
    with InvertedIndex.open(path) as index:
        assert index.search_sparse_batch(queries, 300) == cached
        assert index._ids is None  # no all-ids copy was made
    assert any(d == ids[7] for hits in cached for d, _ in hits)
