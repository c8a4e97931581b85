"""Dense index kind: faiss flat/HNSW/IVF-PQ over tiny vectors, reopen, registry, corrupt files, MiniLM."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import KINDS, build_index, open_index
from retrieval.index.corpus_embeddings import embed_corpus
from retrieval.index.dense import INDEX_FILE, DenseConfig, DenseIndex, build_dense_index
from retrieval.index.doc_ids import IDS_OFFSETS, DocIdTable
from sparsekit.errors import ArtifactError, InputError

DIM = 16


class HashEncoder:
    """A deterministic bag-of-words encoder: each word adds a fixed random vector (tests only)."""

    def encode(self, texts, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i] += np.random.default_rng(zlib.crc32(word.encode())).normal(size=DIM)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def random_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors() -> tuple[list[str], np.ndarray]:
    return [f"doc-{i}" for i in range(300)], random_vectors(300)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory, vectors) -> Path:
    out = tmp_path_factory.mktemp("dense") / "flat"
    return build_dense_index(None, out, DenseConfig("Flat"), vectors=vectors, progress=False)


def test_doc_id_table_round_trips_unicode_ids(tmp_path: Path) -> None:
    ids = ["a", "ü-ß", "日本", "x" * 300, "b"]
    DocIdTable.write(ids, tmp_path)
    table = DocIdTable.open(tmp_path, len(ids))
    assert list(table) == ids and len(table) == 5 and table[2] == "日本"


def test_doc_id_table_finds_rows_by_id(tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(500)] + ["日本", "d7"]  # "d7" repeated: its first row wins
    DocIdTable.write(ids, tmp_path)
    table = DocIdTable.open(tmp_path, len(ids))
    assert [table.row_of(d) for d in ("d0", "d499", "日本", "d7")] == [0, 499, 500, 7]
    assert table.row_of("d500") is None and table.row_of("") is None


def test_doc_id_table_rejects_inconsistent_offsets(tmp_path: Path) -> None:
    DocIdTable.write(["a", "b"], tmp_path)
    with pytest.raises(ArtifactError, match=IDS_OFFSETS):
        DocIdTable.open(tmp_path, 3)
    np.array([0, 5, 1], dtype="<i8").tofile(tmp_path / IDS_OFFSETS)
    with pytest.raises(ArtifactError, match="offsets do not describe"):
        DocIdTable.open(tmp_path, 2)


def test_flat_search_equals_brute_force(flat: Path, vectors) -> None:
    _, matrix = vectors
    index = DenseIndex.open(flat, encoder=HashEncoder())
    queries = random_vectors(5, seed=1)
    scores, rows = index.search_vectors(queries, 10)
    exact = queries @ matrix.T
    assert np.array_equal(rows, np.argsort(-exact, axis=1)[:, :10])
    assert np.allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :10], atol=1e-5)
    assert index.num_docs == 300 and index.kind == "dense"
    _, every = index.search_vectors(queries, 10**12)  # k past the corpus is capped, not allocated
    assert every.shape == (5, 300) and np.array_equal(every[:, :10], rows)


def test_reopened_index_returns_identical_results(flat: Path) -> None:
    queries = random_vectors(4, seed=2)
    with DenseIndex.open(flat, encoder=HashEncoder()) as first:
        before = first.search_vectors(queries, 7)
        texts = first.batch_search(["alpha beta", "gamma"], k=5)
    again = DenseIndex.open(flat, encoder=HashEncoder())
    after = again.search_vectors(queries, 7)
    assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])
    assert again.batch_search(["alpha beta", "gamma"], k=5) == texts
    assert again.search("alpha beta", k=5) == texts[0]


@pytest.mark.parametrize("factory", ["HNSW16", "IVF8,PQ4x4"])
def test_approximate_kinds_find_most_exact_neighbours(tmp_path: Path, vectors, factory: str) -> None:
    _, matrix = vectors
    path = build_dense_index(None, tmp_path / "ix", DenseConfig(factory, nprobe=8), vectors=vectors,
                             progress=False)
    index = DenseIndex.open(path)
    queries = matrix[:20] + 0.01 * random_vectors(20, seed=3)
    _, rows = index.search_vectors(queries, 1)
    assert (rows[:, 0] == np.arange(20)).mean() >= 0.8
    assert json.loads((path / "manifest.json").read_text())["params"]["factory"] == factory


def test_text_search_uses_the_encoder_and_validates_input(tmp_path: Path) -> None:
    texts = {"d1": "cats purr softly", "d2": "volcanoes erupt magma", "d3": "ocean tides and moons"}
    vectors = (list(texts), HashEncoder().encode(list(texts.values())))
    path = build_dense_index(None, tmp_path / "ix", vectors=vectors, progress=False)
    index = DenseIndex.open(path, encoder=HashEncoder())
    assert index.search("magma volcanoes", k=2)[0][0] == "d2"
    assert len(index.search("magma", k=10)) == 3  # k larger than the corpus: no padding rows
    with pytest.raises(InputError, match=r"^text: query is empty"):
        index.search("   ", k=3)
    with pytest.raises(InputError, match="k"):
        index.search("cats", k=0)
    with pytest.raises(InputError, match="queries"):
        index.search_vectors(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(InputError, match="expected a list of query strings"):
        index.batch_search("cats", k=3)  # a bare string is not a batch of its characters


def test_bad_inputs_raise_input_errors(tmp_path: Path, vectors) -> None:
    ids, matrix = vectors
    with pytest.raises(InputError, match="factory"):
        build_dense_index(None, tmp_path / "a", DenseConfig("NoSuchIndex"), vectors=vectors, progress=False)
    with pytest.raises(InputError, match=r"doc_ids\[1\]: duplicate document id 'x' \(first at row 0\)"):
        build_dense_index(None, tmp_path / "b", vectors=(["x"] * 300, matrix), progress=False)
    with pytest.raises(InputError, match=r"doc_ids\[2\]: .*non-empty strings, got 7"):
        build_dense_index(None, tmp_path / "b", vectors=([*ids[:2], 7, *ids[3:]], matrix), progress=False)
    bad = matrix.copy()
    bad[7, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        build_dense_index(None, tmp_path / "c", vectors=(ids, bad), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_bad_factory_fails_before_the_corpus_is_embedded(tmp_path: Path, monkeypatch) -> None:
    from retrieval.index import bigranular, dense
    from retrieval.index.bigranular import BiGranularConfig, build_bigranular_index

    def embed(*args, **kwargs):
        raise AssertionError("the corpus was embedded before the factory string was checked")

    monkeypatch.setattr(dense, "embed_corpus", embed)
    monkeypatch.setattr(bigranular, "embed_corpus", embed)
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
    with pytest.raises(InputError, match="factory"):
        build_dense_index(tmp_path / "corpus.jsonl", tmp_path / "ix", DenseConfig("IVF4,NoSuchCode"))
    with pytest.raises(InputError, match="factory"):  # the bi-granular kind's codes too
        build_bigranular_index(tmp_path / "corpus.jsonl", tmp_path / "bg", BiGranularConfig("OPQ48,PQ4B"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep")
    for overwrite in (False, True):  # exists / is not an artifact: refused before any encoding
        with pytest.raises(ArtifactError, match="taken"):
            build_index("dense", tmp_path, tmp_path / "taken", overwrite=overwrite)


def test_missing_or_corrupt_index_file_names_the_file(tmp_path: Path, vectors) -> None:
    path = build_dense_index(None, tmp_path / "ix", vectors=vectors, progress=False)
    data = bytearray((path / INDEX_FILE).read_bytes())
    data[100] ^= 0xFF
    (path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"index\.faiss.*checksum"):
        DenseIndex.open(path)
    (path / INDEX_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"index\.faiss.*missing"):
        DenseIndex.open(path)


def test_registry_opens_the_dense_kind(flat: Path) -> None:
    assert KINDS["dense"].format == "dense-faiss"
    index = open_index(flat)
    assert isinstance(index, DenseIndex) and index.num_docs == 300


def test_minilm_build_through_the_registry_with_embedding_cache(tmp_path: Path, monkeypatch) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": "c", "title": "Cats", "text": "The domestic cat is a small carnivorous mammal."},
            {"_id": "v", "title": "Volcanoes", "text": "Magma erupts through the crust of the earth."},
            {"_id": "p", "title": "Proteins", "text": "Protein folding pathways in molecular dynamics."}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = build_index("dense", corpus, tmp_path / "ix", cache_dir=tmp_path / "cache", progress=False)
    index = open_index(path)
    assert index.search("volcanic eruption", k=3)[0][0] == "v"
    ids, first = embed_corpus(corpus, tmp_path / "cache", progress=False)
    assert ids == ["c", "v", "p"] and np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    from retrieval.encoders import dense as dense_encoder

    def no_encoder(*args, **kwargs):
        raise AssertionError("the cached embeddings should have been used")

    monkeypatch.setattr(dense_encoder.DenseEncoder, "from_minilm", no_encoder)
    assert np.array_equal(embed_corpus(corpus, tmp_path / "cache", progress=False)[1], first)
