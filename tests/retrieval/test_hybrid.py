"""Hybrid index: fusion math on hand examples; BM25 first stage + memmap dense re-score, reopen, errors."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import open_index
from retrieval.index.bigranular import VECTORS_FILE
from retrieval.index.hybrid import (
    HybridConfig,
    HybridIndex,
    build_hybrid_index,
    fuse,
    linear_scores,
    minmax,
    ranks,
    rrf_scores,
    tune_linear_weight,
)
from sparsekit.errors import ArtifactError, InputError

# ---------------------------------------------------------------- fusion math (no index)


def test_ranks_are_one_based_and_stable_on_ties() -> None:
    assert ranks(np.array([0.2, 0.9, 0.2, 0.5])).tolist() == [3, 1, 4, 2]


def test_rrf_on_a_hand_example() -> None:
    sparse = np.array([3.0, 2.0, 1.0])     # ranks 1, 2, 3
    dense = np.array([0.1, 0.9, 0.5])      # ranks 3, 1, 2
    expected = [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]
    assert np.allclose(rrf_scores(sparse, dense, k=60), expected)
    assert np.allclose(rrf_scores(sparse, dense, k=0), [1 + 1 / 3, 1 / 2 + 1, 1 / 3 + 1 / 2])
    # doc 1 is first by RRF: ranked 1st by dense and 2nd by sparse beats 1st + 3rd
    assert int(np.argmax(rrf_scores(sparse, dense))) == 1


def test_minmax_and_linear_combination_on_a_hand_example() -> None:
    assert minmax(np.array([2.0, 4.0, 6.0])).tolist() == [0.0, 0.5, 1.0]
    assert minmax(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]
    assert minmax(np.array([])).tolist() == []
    sparse = np.array([10.0, 5.0, 0.0])    # -> 1, 0.5, 0
    dense = np.array([0.2, 0.6, 1.0])      # -> 0, 0.5, 1
    assert np.allclose(linear_scores(sparse, dense, 0.25), [0.75, 0.5, 0.25])
    assert np.allclose(linear_scores(sparse, dense, 1.0), [0.0, 0.5, 1.0])
    assert np.allclose(fuse(sparse, dense, HybridConfig(fusion="linear", alpha=0.0)), [1.0, 0.5, 0.0])


def test_config_validation_names_the_field() -> None:
    with pytest.raises(InputError, match="fusion"):
        HybridConfig(fusion="max")
    with pytest.raises(InputError, match="alpha"):
        HybridConfig(alpha=1.5)
    with pytest.raises(InputError, match="depth"):
        HybridConfig(depth=0)


# ---------------------------------------------------------------- the index (BM25 first stage: Java)

DIM = 16
CORPUS = [
    {"_id": "d1", "title": "Protein folding", "text": "Molecular dynamics simulations of folding pathways."},
    {"_id": "d2", "title": "Cats", "text": "The domestic cat is a small carnivorous mammal."},
    {"_id": "d3", "title": "Climate", "text": "Global warming raises sea levels and ocean temperatures."},
    {"_id": "d4", "title": "", "text": "Feline diet: cats need protein in their food."},
    {"_id": "d5", "title": "Volcanoes", "text": "Magma erupts through the crust."},
]


class HashEncoder:
    """A deterministic bag-of-words encoder (tests only)."""

    def encode(self, texts, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(":", " ").replace(".", " ").split():
                out[i] += np.random.default_rng(zlib.crc32(word.encode())).normal(size=DIM)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def doc_vectors() -> tuple[list[str], np.ndarray]:
    return [r["_id"] for r in CORPUS], HashEncoder().encode([f"{r['title']} {r['text']}" for r in CORPUS])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hybrid")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    return build_hybrid_index(corpus, root / "index", "bm25", HybridConfig(depth=5, dtype="float32"),
                              first_stage_params={"threads": 1}, vectors=doc_vectors(), progress=False)


@pytest.mark.java
def test_fusion_extremes_reproduce_each_ranking(built: Path) -> None:
    index = HybridIndex.open(built, encoder=HashEncoder())
    query = "cats protein"
    first = index.first_stage.search(query, 5)
    qvec = HashEncoder().encode([query])[0]
    sparse_only = index.rerank(first, qvec, 5, HybridConfig(fusion="linear", alpha=0.0, depth=5))
    assert [d for d, _ in sparse_only] == [d for d, _ in first]
    dense_only = index.rerank(first, qvec, 5, HybridConfig(fusion="linear", alpha=1.0, depth=5))
    ids, matrix = doc_vectors()
    dense = {d: float(matrix[ids.index(d)] @ qvec) for d, _ in first}
    assert [d for d, _ in dense_only] == sorted(dense, key=lambda d: -dense[d])
    index.close()


@pytest.mark.java
def test_rrf_search_matches_the_formula(built: Path) -> None:
    index = HybridIndex.open(built, encoder=HashEncoder())
    query = "cats protein"
    first = index.first_stage.search(query, 5)
    ids, matrix = doc_vectors()
    qvec = HashEncoder().encode([query])[0]
    dense = np.array([matrix[ids.index(d)] @ qvec for d, _ in first])
    expected = rrf_scores(np.array([s for _, s in first]), dense, 60)
    hits = index.search(query, k=5)
    assert [s for _, s in hits] == pytest.approx(sorted(expected, reverse=True))
    index.close()


@pytest.mark.java
def test_index_built_closed_and_reopened_returns_identical_results(built: Path) -> None:
    with HybridIndex.open(built, encoder=HashEncoder()) as index:
        before = index.batch_search(["cats protein", "ocean warming", "magma"], k=3)
    reopened = open_index(built)
    assert isinstance(reopened, HybridIndex) and reopened.num_docs == 5
    reopened.queries._encoder = HashEncoder()
    assert reopened.batch_search(["cats protein", "ocean warming", "magma"], k=3) == before
    assert reopened.search("magma", k=3) == before[2]
    reopened.close()


@pytest.mark.java
def test_tuning_the_linear_weight_picks_a_grid_value(built: Path) -> None:
    index = HybridIndex.open(built, encoder=HashEncoder())
    texts, qids = ["cats protein", "ocean warming"], ["q1", "q2"]
    first = index.first_stage.batch_search(texts, 5)
    qrels = {"q1": {"d4": 1}, "q2": {"d3": 1}}
    queries = HashEncoder().encode(texts)
    alpha, table = tune_linear_weight(index, first, queries, qids, qrels, grid=[0.0, 0.5, 1.0])
    assert alpha in (0.0, 0.5, 1.0) and set(table) == {0.0, 0.5, 1.0}
    assert table[alpha] == max(table.values())
    index.close()


@pytest.mark.java
def test_missing_or_corrupt_vectors_are_named(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "ix"
    shutil.copytree(built, path)
    with open(path / VECTORS_FILE, "r+b") as fh:
        fh.write(b"\xff" * 8)
    with pytest.raises(ArtifactError, match=r"vectors\.bin.*checksum"):
        HybridIndex.open(path)
    (path / VECTORS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"vectors\.bin"):
        HybridIndex.open(path, verify=False)


def test_unknown_first_stage_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    with pytest.raises(InputError, match="first_stage"):
        build_hybrid_index(corpus, tmp_path / "ix", "no-such-kind", vectors=doc_vectors(), progress=False)
    assert not (tmp_path / "ix").exists()
    from retrieval.index import hybrid

    def embed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was embedded before first_stage was checked")

    monkeypatch.setattr(hybrid, "embed_corpus", embed)
    with pytest.raises(InputError, match="first_stage"):
        build_hybrid_index(corpus, tmp_path / "ix", "no-such-kind", progress=False)
    with pytest.raises(InputError, match=r"nope\.jsonl: corpus file not found"):
        build_hybrid_index(tmp_path / "nope.jsonl", tmp_path / "ix", "bm25", progress=False)


@pytest.mark.java
def test_a_first_stage_of_another_corpus_is_refused_before_embedding(built: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An index directory given as the first stage must index the same documents: otherwise the build
    would publish an index that cannot be opened (and, with overwrite, replace a working one)."""
    from retrieval.index import hybrid

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS[:3]))

    def embed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was embedded before the first stage was checked")

    monkeypatch.setattr(hybrid, "embed_corpus", embed)
    with pytest.raises(InputError, match=r"first_stage: .* was built from another corpus"):
        build_hybrid_index(corpus, tmp_path / "ix", built / "first_stage", progress=False)
    assert not (tmp_path / "ix").exists()
    same = built.parent / "corpus.jsonl"  # the first stage's own corpus, but vectors of 3 documents
    ids, vectors = doc_vectors()
    with pytest.raises(InputError, match=r"indexes 5 documents, the corpus vectors number 3"):
        build_hybrid_index(same, tmp_path / "ix", built / "first_stage", vectors=(ids[:3], vectors[:3]),
                           progress=False)
    assert not (tmp_path / "ix").exists()


@pytest.mark.java
def test_k_above_depth_still_returns_k_hits_and_k_is_checked_without_hits(built: Path) -> None:
    """depth bounds the re-scoring work, not the answer; a bad k is an error whether or not the first
    stage finds anything."""
    index = HybridIndex.open(built, encoder=HashEncoder(), depth=1)
    assert len(index.first_stage.search("cats protein", 5)) > 1
    assert len(index.search("cats protein", k=5)) == len(index.first_stage.search("cats protein", 5))
    assert index.batch_search(["cats protein"], k=5) == [index.search("cats protein", 5)]
    with pytest.raises(InputError, match="k"):
        index.search("the of and", k=0)  # stopwords only: no first-stage hits
    with pytest.raises(InputError, match="k"):
        index.batch_search(["the of and"], k=0)
    index.close()


def test_a_bad_first_stage_option_fails_before_the_corpus_is_embedded(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`sparsekit index --kind hybrid --first-stage sparse` without --model, or a bad BM25 option, must
    fail at once, not after the dense encoder has read the whole corpus (minutes on a CPU)."""
    from retrieval.index import hybrid

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))

    def embed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was embedded before the first stage was built")

    monkeypatch.setattr(hybrid, "embed_corpus", embed)
    out = tmp_path / "ix"
    with pytest.raises(ValueError, match="needs a trained model"):
        build_hybrid_index(corpus, out, "sparse", first_stage_params={"model": None}, progress=False)
    with pytest.raises(ArtifactError, match="no-model"):
        build_hybrid_index(corpus, out, "sparse", first_stage_params={"model": tmp_path / "no-model"},
                           progress=False)
    with pytest.raises(InputError, match="k1"):
        build_hybrid_index(corpus, out, "bm25", first_stage_params={"k1": -1.0}, progress=False)
    assert not (tmp_path / "ix").exists()


@pytest.mark.java
def test_vectors_of_other_documents_are_refused_at_build(tmp_path: Path) -> None:
    """Vectors whose ids are not the corpus's used to build an index whose every search failed."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    ids, matrix = doc_vectors()
    with pytest.raises(InputError, match=r"vectors: no vector for document 'd5'"):
        build_hybrid_index(corpus, tmp_path / "ix", "bm25", first_stage_params={"threads": 1},
                           vectors=([*ids[:4], "other"], matrix), progress=False)
    assert not (tmp_path / "ix").exists()
