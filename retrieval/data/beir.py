"""Reader for the BEIR benchmark file layout (Thakur et al., NeurIPS 2021 Datasets and Benchmarks).

A BEIR dataset folder (SciFact, NFCorpus, MS MARCO, ...) holds ``corpus.jsonl`` (one JSON object per
line: ``_id``, optional ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``, integer scores). The corpus is read
line by line, so :func:`iter_corpus` streams corpora far larger than memory in batches. Every malformed
line raises :class:`~sparsekit.errors.InputError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsekit.errors import InputError

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True, slots=True)
class Doc:
    """One corpus document; ``title`` is ``""`` when the corpus has none."""

    id: str
    title: str
    text: str


@dataclass
class BeirDataset:
    """One split of a BEIR dataset: the whole corpus, the queries judged in the split, their qrels."""

    corpus: dict[str, Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(path, "file not found")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` of a UTF-8 text file, one line in memory at a time."""
    _require_file(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 ({e.reason})", line_no) from None
            yield line_no, line


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON-lines file, streaming."""
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"malformed JSON: {e.msg} (column {e.colno})", line_no) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line_no)
        yield line_no, obj


def _string_field(obj: dict[str, Any], name: str, path: Path, line_no: int, required: bool = True) -> str:
    if name not in obj:
        if required:
            raise InputError(path, f"missing field '{name}'", line_no)
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise InputError(path, f"field '{name}' must be a string, got {type(value).__name__}", line_no)
    return value


def _record_id(obj: dict[str, Any], path: Path, line_no: int, seen: dict[str, int]) -> str:
    """The ``_id`` of a record, checked non-empty and not seen on an earlier line."""
    rid = _string_field(obj, "_id", path, line_no)
    if not rid.strip():
        raise InputError(path, "field '_id' is empty", line_no)
    first = seen.setdefault(rid, line_no)
    if first != line_no:
        raise InputError(path, f"duplicate _id {rid!r} (first on line {first})", line_no)
    return rid


_JAVA_TRIM = "".join(map(chr, range(0x21)))  # what Java's String.trim() drops: every char <= U+0020


def _blank(value: str) -> bool:
    """Nothing left after Python's ``strip()`` or Java's ``trim()`` (control characters: Anserini
    counts such a document as empty and the BM25 build fails without naming it)."""
    return not value.strip() or not value.strip(_JAVA_TRIM)


def _parse_doc(obj: dict[str, Any], path: Path, line_no: int, seen: dict[str, int]) -> Doc:
    doc_id = _record_id(obj, path, line_no, seen)
    title = _string_field(obj, "title", path, line_no, required=False)
    text = _string_field(obj, "text", path, line_no)
    if _blank(text) and _blank(title):
        raise InputError(path, f"document {doc_id!r} has an empty 'text' and an empty 'title'", line_no)
    return Doc(doc_id, title, text)


def iter_corpus(path: str | Path, batch_size: int = 1024) -> Iterator[list[Doc]]:
    """Stream ``corpus.jsonl`` in lists of up to ``batch_size`` documents (one line in memory at a time).

    Duplicate ids are detected across the whole file; only the ids are kept for that.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    seen: dict[str, int] = {}
    batch: list[Doc] = []
    for line_no, obj in _json_objects(path):
        batch.append(_parse_doc(obj, path, line_no, seen))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_corpus(path: str | Path) -> dict[str, Doc]:
    """All documents of ``corpus.jsonl`` by id, in file order."""
    return {doc.id: doc for batch in iter_corpus(path) for doc in batch}


def load_queries(path: str | Path) -> dict[str, str]:
    """Query text by id from ``queries.jsonl``, in file order; extra fields (``metadata``) are ignored."""
    path = Path(path)
    seen: dict[str, int] = {}
    queries: dict[str, str] = {}
    for line_no, obj in _json_objects(path):
        qid = _record_id(obj, path, line_no, seen)
        text = _string_field(obj, "text", path, line_no)
        if not text.strip():
            raise InputError(path, f"query {qid!r} has an empty 'text'", line_no)
        queries[qid] = text
    return queries


def _qrels_row(line: str, path: Path, line_no: int) -> tuple[str, str, int]:
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != len(QRELS_HEADER):
        raise InputError(path, f"expected 3 tab-separated columns, got {len(cols)}", line_no)
    qid, doc_id, score = cols
    for name, value in (("query-id", qid), ("corpus-id", doc_id)):
        if not value.strip():
            raise InputError(path, f"field '{name}' is empty", line_no)
    try:
        return qid, doc_id, int(score)
    except ValueError:
        raise InputError(path, f"field 'score': {score!r} is not an integer", line_no) from None


def _check_known(
    value: str, known: Collection[str] | None, field: str, what: str, path: Path, line_no: int
) -> None:
    if known is not None and value not in known:
        raise InputError(path, f"field '{field}': {value!r} is not a known {what} id", line_no)


def _check_header(line: str, path: Path) -> None:
    header = line.rstrip("\r\n")
    if tuple(header.split("\t")) != QRELS_HEADER:
        raise InputError(path, f"header must be {'<TAB>'.join(QRELS_HEADER)!r}, got {header!r}", 1)


def load_qrels(
    path: str | Path,
    query_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Relevance judgements ``{query id: {doc id: score}}`` from a BEIR ``qrels/<split>.tsv``.

    When ``query_ids`` / ``doc_ids`` are given, every judged query / document must be among them.
    """
    path = Path(path)
    lines = _text_lines(path)
    first = next(lines, None)
    if first is None:
        raise InputError(path, f"empty file, expected the header {'<TAB>'.join(QRELS_HEADER)!r}")
    _check_header(first[1], path)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in lines:
        if not line.strip():
            continue
        qid, doc_id, score = _qrels_row(line, path, line_no)
        _check_known(qid, query_ids, "query-id", "query", path, line_no)
        _check_known(doc_id, doc_ids, "corpus-id", "document", path, line_no)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise InputError(path, f"duplicate judgement for query {qid!r}, doc {doc_id!r}", line_no)
        judged[doc_id] = score
    return qrels


def available_splits(folder: str | Path) -> list[str]:
    """The split names that have a ``qrels/<split>.tsv`` file in a BEIR folder, sorted."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """A BEIR dataset folder for one split: the corpus, the queries judged in ``split`` and its qrels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "BEIR dataset folder not found")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = ", ".join(available_splits(folder)) or "none"
        raise InputError(qrels_path, f"no qrels for split {split!r}; available splits: {splits}")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path, query_ids=queries.keys(), doc_ids=corpus.keys())
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    return BeirDataset(corpus=corpus, queries=judged, qrels=qrels)
