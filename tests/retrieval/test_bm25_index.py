"""BM25 index kind: build from a BEIR corpus, search, atomic rebuilds, corrupt artifacts, SciFact quality."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retrieval.engines import anserini, jvm
from retrieval.index.bm25 import FORMAT, LUCENE_DIR, Bm25Index, build_bm25_index
from sparsekit.artifacts import MANIFEST, write_artifact
from sparsekit.dataroot import dataset_path
from sparsekit.errors import ArtifactError, InputError

pytestmark = pytest.mark.java

CORPUS = [
    {"_id": "d1", "title": "Protein folding", "text": "Molecular dynamics simulations of folding pathways."},
    {"_id": "d2", "title": "Cats", "text": "The domestic cat is a small carnivorous mammal."},
    {"_id": "d3", "title": "Climate", "text": "Global warming raises sea levels and ocean temperatures."},
    {"_id": "d4", "title": "", "text": "Feline diet: cats need protein in their food."},
    {"_id": "d5", "title": "Volcanoes", "text": "Magma erupts through the crust."},
]


def _corpus(path: Path, rows: list[dict] = CORPUS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bm25")
    return build_bm25_index(_corpus(root / "corpus.jsonl"), root / "index", threads=1, progress=False)


@pytest.fixture(scope="module")
def index(built: Path) -> Bm25Index:
    return Bm25Index.open(built)


def test_manifest_records_params_source_and_counts(built: Path, index: Bm25Index) -> None:
    manifest = json.loads((built / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"]) == (FORMAT, 1)
    assert manifest["params"]["k1"] == 0.9 and manifest["params"]["b"] == 0.4
    assert manifest["params"]["contents"] == 'title + " " + text'
    assert manifest["counts"]["num_docs"] == 5
    assert set(manifest["source"]) == {"corpus.jsonl"}
    assert all(name.startswith(f"{LUCENE_DIR}/") for name in manifest["files"])  # no staging leftovers
    assert (index.kind, index.num_docs, index.k1, index.b) == ("bm25", 5, 0.9, 0.4)


def test_search_ranks_the_matching_document_first(index: Bm25Index) -> None:
    hits = index.search("protein folding simulations", k=10)
    assert hits[0][0] == "d1"
    assert {d for d, _ in hits} == {"d1", "d4"}
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert index.search("climate", k=3)[0][0] == "d3"  # the title is indexed with the text
    assert index.search("cats", k=1) == index.search("cats", k=5)[:1]


def test_batch_search_keeps_input_order(index: Bm25Index) -> None:
    queries = ["magma crust", "cat mammal", "ocean", "protein"]
    batch = index.batch_search(queries, k=3, threads=2)
    assert batch == [index.search(q, k=3) for q in queries]
    assert [hits[0][0] for hits in batch] == ["d5", "d2", "d3", batch[3][0][0]]


def test_batch_search_from_many_python_threads(index: Bm25Index) -> None:
    """A threaded gRPC server calls batch_search concurrently: pyserini's batch builds pyjnius objects
    that break when shared across threads (NullPointerException), so each searcher runs one batch at
    a time. Without that lock, 6 threads x 100 batches failed in 3 of 4 runs."""
    queries = ["magma crust", "cat mammal", "ocean"]
    expected = index.batch_search(queries, k=3)

    def client(_: int) -> list[bool]:
        return [index.batch_search(queries, k=3) == expected for _ in range(20)]

    with ThreadPoolExecutor(6) as pool:
        assert all(ok for results in pool.map(client, range(6)) for ok in results)


def test_empty_queries_name_the_field(index: Bm25Index) -> None:
    with pytest.raises(InputError, match=r"^text: query is empty"):
        index.search(" \t ")
    with pytest.raises(InputError, match=r"^texts\[2\]: query is empty"):
        index.batch_search(["a", "b", ""])
    with pytest.raises(InputError, match=r"^text: query must be a string"):
        index.search(None)  # type: ignore[arg-type]


def test_existing_index_is_not_replaced_without_overwrite(built: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        build_bm25_index(_corpus(tmp_path / "other.jsonl", CORPUS[:2]), built, progress=False)
    assert Bm25Index.open(built).num_docs == 5


def test_failed_rebuild_leaves_the_published_index_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index"
    build_bm25_index(_corpus(tmp_path / "v1.jsonl"), target, threads=1, progress=False)
    before = (target / MANIFEST).read_text()

    def dies_mid_build(main_class: str, args: list, timeout: float | None = None) -> str:
        index_dir = Path(args[args.index("-index") + 1])
        index_dir.mkdir()
        (index_dir / "_0.fdt").write_bytes(b"half a segment")
        raise jvm.LuceneError("IndexCollection failed (exit code 137)")

    monkeypatch.setattr(anserini, "run_anserini", dies_mid_build)
    with pytest.raises(jvm.LuceneError, match="137"):
        build_bm25_index(_corpus(tmp_path / "v2.jsonl", CORPUS[:2]), target, overwrite=True, progress=False)
    monkeypatch.undo()

    assert (target / MANIFEST).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "v1.jsonl", "v2.jsonl"]  # no temp dirs
    reopened = Bm25Index.open(target)
    assert reopened.num_docs == 5
    assert reopened.search("volcanoes magma", k=1)[0][0] == "d5"


def test_overwrite_replaces_the_index(tmp_path: Path) -> None:
    target = tmp_path / "index"
    build_bm25_index(_corpus(tmp_path / "v1.jsonl"), target, threads=1, progress=False)
    build_bm25_index(_corpus(tmp_path / "v2.jsonl", CORPUS[:2]), target, k1=1.2, b=0.75, overwrite=True,
                     progress=False)
    index = Bm25Index.open(target)
    assert (index.num_docs, index.k1, index.b) == (2, 1.2, 0.75)


def test_malformed_corpus_line_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(CORPUS[0]) + "\n" + '{"_id": "d2", "text": "unterminated\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl:2: malformed JSON"):
        build_bm25_index(corpus, tmp_path / "index", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


@pytest.mark.parametrize(
    ("params", "field"), [({"k1": -1.0}, "k1"), ({"b": 1.5}, "b"), ({"threads": 0}, "threads")]
)
def test_bad_build_params(tmp_path: Path, params: dict, field: str) -> None:
    with pytest.raises(InputError, match=rf"^{field}:"):
        build_bm25_index(_corpus(tmp_path / "c.jsonl"), tmp_path / "index", progress=False, **params)


def test_missing_corpus_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="corpus file not found"):
        build_bm25_index(tmp_path / "nope.jsonl", tmp_path / "index", progress=False)


@pytest.fixture
def copied(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "copy"))


def test_corrupt_manifest(copied: Path) -> None:
    (copied / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        Bm25Index.open(copied)


def test_missing_index_file(copied: Path) -> None:
    victim = next(p for p in sorted((copied / LUCENE_DIR).iterdir()) if p.name.startswith("segments"))
    victim.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Bm25Index.open(copied)


def test_flipped_bytes_fail_the_checksum(copied: Path) -> None:
    victim = max((copied / LUCENE_DIR).iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Bm25Index.open(copied)


def test_missing_directory_and_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such artifact"):
        Bm25Index.open(tmp_path / "absent")
    with write_artifact(tmp_path / "other", format="dense-faiss", version=1) as w:
        w.path("x.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="format is 'dense-faiss'"):
        Bm25Index.open(tmp_path / "other")


# ---- real data ---------------------------------------------------------------------------------------


@pytest.mark.data
def test_scifact_reproduces_the_pyserini_bm25_flat_baseline(tmp_path: Path) -> None:
    """SciFact test: Pyserini's BM25 flat (k1=0.9, b=0.4) gives NDCG@10 0.6789 / R@100 0.9253."""
    root = dataset_path("scifact")
    if root is None:
        pytest.skip("dataset 'scifact' not found under the data root (set SPARSEKIT_DATA)")
    import pytrec_eval

    from retrieval.data.beir import load_qrels, load_queries

    qrels = load_qrels(root / "qrels" / "test.tsv")
    queries = load_queries(root / "queries.jsonl")
    qids = [q for q in queries if q in qrels]
    index = Bm25Index.open(build_bm25_index(root / "corpus.jsonl", tmp_path / "scifact", progress=False))
    assert index.num_docs == 5183
    hits = index.batch_search([queries[q] for q in qids], k=100, threads=2)
    run = {q: {d: s for d, s in h} for q, h in zip(qids, hits, strict=True)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
    ndcg = sum(per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels) / len(qrels)
    recall = sum(per_query.get(q, {}).get("recall_100", 0.0) for q in qrels) / len(qrels)
    assert ndcg == pytest.approx(0.6789, abs=0.002)
    assert recall == pytest.approx(0.9253, abs=0.002)
