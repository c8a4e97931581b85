"""BEIR loader: every malformed-input case names the file and line; SciFact loads with its known counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.data.beir import (
    BeirDataset,
    Doc,
    iter_corpus,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from sparsekit.dataroot import dataset_path
from sparsekit.errors import InputError

DOCS = [
    {"_id": "d1", "title": "Alpha", "text": "first document"},
    {"_id": "d2", "text": "no title here"},
    {"_id": "d3", "title": "Only a title", "text": ""},
]
QUERIES = [
    {"_id": "q1", "text": "what is alpha"},
    {"_id": "q2", "text": "second"},
    {"_id": "q3", "text": "x"},
]
QRELS = {"test": "q1\td1\t1\nq1\td2\t2\n", "train": "q2\td3\t1\n"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _qrels(path: Path, body: str, header: str = "query-id\tcorpus-id\tscore\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body, encoding="utf-8")
    return path


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    _jsonl(tmp_path / "corpus.jsonl", DOCS)
    _jsonl(tmp_path / "queries.jsonl", QUERIES)
    for split, body in QRELS.items():
        _qrels(tmp_path / "qrels" / f"{split}.tsv", body)
    return tmp_path


def _raises(match: str, fn, *args, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    return info.value


# ---- well-formed input ---------------------------------------------------------------------------


def test_load_corpus_reads_docs_with_optional_title(beir_dir: Path) -> None:
    corpus = load_corpus(beir_dir / "corpus.jsonl")
    assert list(corpus) == ["d1", "d2", "d3"]
    assert corpus["d1"] == Doc("d1", "Alpha", "first document")
    assert corpus["d2"].title == ""
    assert corpus["d3"] == Doc("d3", "Only a title", "")


def test_iter_corpus_streams_batches_in_order(beir_dir: Path) -> None:
    batches = list(iter_corpus(beir_dir / "corpus.jsonl", batch_size=2))
    assert [[d.id for d in b] for b in batches] == [["d1", "d2"], ["d3"]]


def test_iter_corpus_is_lazy(tmp_path: Path) -> None:
    # the error on line 3 surfaces only after the first batch was handed out
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{broken\n', encoding="utf-8")
    batches = iter_corpus(path, batch_size=1)
    assert [d.id for d in next(batches)] == ["a"]
    assert [d.id for d in next(batches)] == ["b"]
    with pytest.raises(InputError, match=r"corpus\.jsonl:3: malformed JSON"):
        next(batches)


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n\n   \n{"_id": 5, "text": "y"}\n', encoding="utf-8")
    err = _raises("must be a string", load_corpus, path)
    assert err.line == 4


def test_load_queries_and_qrels(beir_dir: Path) -> None:
    queries = load_queries(beir_dir / "queries.jsonl")
    assert queries == {"q1": "what is alpha", "q2": "second", "q3": "x"}
    qrels = load_qrels(beir_dir / "qrels" / "test.tsv")
    assert qrels == {"q1": {"d1": 1, "d2": 2}}


def test_load_beir_keeps_only_judged_queries(beir_dir: Path) -> None:
    data = load_beir(beir_dir, "test")
    assert isinstance(data, BeirDataset)
    assert set(data.corpus) == {"d1", "d2", "d3"}
    assert data.queries == {"q1": "what is alpha"}
    assert data.qrels == {"q1": {"d1": 1, "d2": 2}}
    assert load_beir(beir_dir, "train").queries == {"q2": "second"}


# ---- corpus / queries errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line3", "match"),
    [
        ('{"_id": "x", "text": "unterminated}', r"malformed JSON"),
        ('["_id", "x"]', r"expected a JSON object, got list"),
        ('{"title": "t", "text": "body"}', r"missing field '_id'"),
        ('{"_id": "x", "title": "t"}', r"missing field 'text'"),
        ('{"_id": 7, "text": "body"}', r"field '_id' must be a string, got int"),
        ('{"_id": "x", "title": null, "text": "body"}', r"field 'title' must be a string, got NoneType"),
        ('{"_id": "x", "text": ["a"]}', r"field 'text' must be a string, got list"),
        ('{"_id": "", "text": "body"}', r"field '_id' is empty"),
        ('{"_id": "x", "title": " ", "text": ""}', r"document 'x' has an empty 'text' and an empty 'title'"),
        ('{"_id": "x", "title": "", "text": "\\u0001\\u001f "}',  # only what Java's trim() drops
         r"document 'x' has an empty 'text'"),
        ('{"_id": "d1", "text": "again"}', r"duplicate _id 'd1' \(first on line 1\)"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path: Path, line3: str, match: str) -> None:
    path = tmp_path / "corpus.jsonl"
    good = "".join(json.dumps(d) + "\n" for d in DOCS[:2])
    path.write_text(good + line3 + "\n", encoding="utf-8")
    err = _raises(rf"corpus\.jsonl:3: {match}", load_corpus, path)
    assert err.line == 3
    assert err.source == str(path)


def test_corpus_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n')
    _raises(r"corpus\.jsonl:2: not valid UTF-8", load_corpus, path)


@pytest.mark.parametrize(
    ("line2", "match"),
    [
        ('{"_id": "q9"}', r"missing field 'text'"),
        ('{"_id": "q9", "text": 3}', r"field 'text' must be a string, got int"),
        ('{"_id": "q9", "text": "  "}', r"query 'q9' has an empty 'text'"),
        ('{"_id": "q1", "text": "dup"}', r"duplicate _id 'q1' \(first on line 1\)"),
        ("not json", r"malformed JSON"),
    ],
)
def test_query_errors_name_file_and_line(tmp_path: Path, line2: str, match: str) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps(QUERIES[0]) + "\n" + line2 + "\n", encoding="utf-8")
    _raises(rf"queries\.jsonl:2: {match}", load_queries, path)


def test_missing_corpus_file(tmp_path: Path) -> None:
    err = _raises(r"corpus\.jsonl: file not found", load_corpus, tmp_path / "corpus.jsonl")
    assert err.line is None


def test_bad_batch_size(beir_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_corpus(beir_dir / "corpus.jsonl", batch_size=0))


# ---- qrels errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["query-id\tcorpus-id\n", "qid\tdocid\tscore\n", "query-id corpus-id score\n", "q1\td1\t1\n"],
)
def test_qrels_wrong_header(tmp_path: Path, header: str) -> None:
    path = _qrels(tmp_path / "test.tsv", "q1\td1\t1\n", header=header)
    _raises(r"test\.tsv:1: header must be 'query-id<TAB>corpus-id<TAB>score'", load_qrels, path)


def test_qrels_empty_file(tmp_path: Path) -> None:
    path = _qrels(tmp_path / "test.tsv", "", header="")
    _raises(r"test\.tsv: empty file, expected the header", load_qrels, path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("q1\td2\n", r"expected 3 tab-separated columns, got 2"),
        ("q1\td2\t1\textra\n", r"expected 3 tab-separated columns, got 4"),
        ("q1 d2 1\n", r"expected 3 tab-separated columns, got 1"),
        ("q1\td2\t1.5\n", r"field 'score': '1.5' is not an integer"),
        ("q1\td2\thigh\n", r"field 'score': 'high' is not an integer"),
        ("\td2\t1\n", r"field 'query-id' is empty"),
        ("q1\td1\t0\n", r"duplicate judgement for query 'q1', doc 'd1'"),
    ],
)
def test_qrels_row_errors(tmp_path: Path, row: str, match: str) -> None:
    path = _qrels(tmp_path / "dev.tsv", "q1\td1\t1\n" + row)
    err = _raises(rf"dev\.tsv:3: {match}", load_qrels, path)
    assert err.line == 3


def test_qrels_unknown_query_and_doc(beir_dir: Path) -> None:
    _qrels(beir_dir / "qrels" / "test.tsv", "q1\td1\t1\nq404\td1\t1\n")
    _raises(r"test\.tsv:3: field 'query-id': 'q404' is not a known query id", load_beir, beir_dir, "test")
    _qrels(beir_dir / "qrels" / "test.tsv", "q1\td1\t1\nq2\td1\t1\nq2\tnope\t1\n")
    _raises(r"test\.tsv:4: field 'corpus-id': 'nope' is not a known document id", load_beir, beir_dir, "test")


def test_missing_split_lists_available(beir_dir: Path) -> None:
    err = _raises(r"no qrels for split 'dev'; available splits: test, train", load_beir, beir_dir, "dev")
    assert err.source == str(beir_dir / "qrels" / "dev.tsv")


def test_missing_folder(tmp_path: Path) -> None:
    _raises(r"nowhere: BEIR dataset folder not found", load_beir, tmp_path / "nowhere", "test")


def test_load_beir_reports_corpus_errors_with_its_file(beir_dir: Path) -> None:
    with (beir_dir / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"_id": "d9", "text": ""}\n')
    _raises(r"corpus\.jsonl:4: document 'd9' has an empty", load_beir, beir_dir, "test")


# ---- real data -----------------------------------------------------------------------------------


def _scifact() -> Path:
    path = dataset_path("scifact")
    if path is None:
        pytest.skip("dataset 'scifact' not found under the data root (set SPARSEKIT_DATA)")
    return path


@pytest.mark.data
def test_scifact_counts() -> None:
    root = _scifact()
    corpus = load_corpus(root / "corpus.jsonl")
    assert len(corpus) == 5183
    assert sum(len(b) for b in iter_corpus(root / "corpus.jsonl", batch_size=500)) == 5183
    assert max(len(b) for b in iter_corpus(root / "corpus.jsonl", batch_size=500)) == 500
    assert len(load_queries(root / "queries.jsonl")) == 1109
    for split, n_queries, n_rows in (("test", 300, 339), ("train", 809, 919)):
        data = load_beir(root, split)
        assert len(data.corpus) == 5183
        assert len(data.queries) == n_queries
        assert set(data.queries) == set(data.qrels)
        assert sum(len(docs) for docs in data.qrels.values()) == n_rows
        assert {s for docs in data.qrels.values() for s in docs.values()} == {1}
        assert all(doc_id in data.corpus for docs in data.qrels.values() for doc_id in docs)
