"""Search over Lucene indexes in-process: BM25 and learned-sparse impact search through pyserini.

pyserini 1.x (Lin et al., SIGIR 2021) ``LuceneSearcher`` scores BM25 with ``set_bm25(k1, b)``;
``LuceneImpactSearcher`` scores ``sum(q_w * d_impact)`` over integer impacts
(:func:`~retrieval.engines.impacts.quantize_impacts`). Both run in the JVM that
:mod:`~retrieval.engines.jvm` starts, are callable from any thread (:func:`~retrieval.engines.jvm.java_call`)
and return plain Python ``(doc id, score)`` pairs. Indexes are built by :mod:`~retrieval.engines.anserini`.

pyserini's ``batch_search`` builds pyjnius ``JArrayList`` / ``JHashMap`` objects that are not safe to
use from several Python threads at once (intermittent ``NullPointerException`` /
``IncompatibleClassChangeError`` under a threaded gRPC server; pyjnius issue #287): each searcher
runs one batch at a time (a batch is already parallel on Java threads), single queries run freely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from retrieval.engines.impacts import check_impacts
from retrieval.engines.jvm import LuceneError, import_pyserini_lucene, java_call
from retrieval.query_checks import check_k, check_text, check_texts
from sparsekit.errors import InputError


def _check_k(k: Any, num_docs: int) -> int:
    return min(check_k(k), max(num_docs, 1))


def _check_qids(qids: Sequence[str] | None, n: int) -> list[str]:
    if qids is None:
        return [str(i) for i in range(n)]
    qids = [str(q) for q in qids]
    if len(qids) != n:
        raise InputError("qids", f"{len(qids)} ids for {n} queries")
    if len(set(qids)) != n:
        raise InputError("qids", "query ids must be unique")
    return qids


def _open(searcher: Any) -> Any:
    if searcher is None:
        raise LuceneError("searcher is closed")
    return searcher


def _hits(hits: Any) -> list[tuple[str, float]]:
    return [(str(h.docid), float(h.score)) for h in hits]


def _batch_hits(searcher: Any, queries: Sequence[Any], qids: list[str], k: int, threads: int,
                field: str) -> dict[str, list[tuple[str, float]]]:
    """``searcher``'s pyserini ``batch_search`` of ``queries`` (one batch at a time: pyjnius objects are
    not thread-safe), hits per query id; a query Lucene refuses is named as ``field[i]``."""
    k, threads = _check_k(k, searcher.num_docs), check_k(threads, "threads")
    try:
        with searcher._batch_lock:
            results = _open(searcher._searcher).batch_search(queries, qids, k=k, threads=threads)
    except Exception as exc:
        _name_refused_query(exc, searcher.search, queries, k, field)
        raise
    return {qid: _hits(results.get(qid, [])) for qid in qids}


def _name_refused_query(exc: Exception, search: Callable[[Any, int], Any], queries: Sequence[Any], k: int,
                        field: str) -> None:
    """A query Lucene refused in a batch only shows as a missing task: search ``queries`` one by one
    and raise the first refusal as an :class:`InputError` naming ``field[i]``."""
    if "completedTaskCount" not in str(exc):
        return
    for i, query in enumerate(queries):
        try:
            search(query, k)
        except InputError as refusal:
            raise InputError(f"{field}[{i}]", refusal.reason) from exc


class Bm25Searcher:
    """BM25 over a Lucene index: pyserini ``LuceneSearcher`` with ``set_bm25(k1, b)``."""

    @java_call("opening the Lucene index")
    def __init__(self, index_dir: str | Path, k1: float = 0.9, b: float = 0.4) -> None:
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise LuceneError(f"{index_dir}: no Lucene index folder")
        lucene = import_pyserini_lucene()
        self.index_dir = index_dir
        self.k1, self.b = float(k1), float(b)
        self._searcher = lucene.LuceneSearcher(str(index_dir))
        self._searcher.set_bm25(self.k1, self.b)
        self.num_docs = int(self._searcher.num_docs)
        self._batch_lock = threading.Lock()

    @java_call("BM25 search", query="text")
    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, score)`` for one query, best first."""
        text = check_text(text)
        return _hits(_open(self._searcher).search(text, _check_k(k, self.num_docs)))

    @java_call("BM25 batch search")
    def batch_search(
        self, texts: Sequence[str], qids: Sequence[str] | None = None, k: int = 10, threads: int = 1
    ) -> dict[str, list[tuple[str, float]]]:
        """Top-``k`` hits per query id (ids default to ``"0"``, ``"1"``, ...), searched on Java threads."""
        texts = check_texts(texts)
        qids = _check_qids(qids, len(texts))
        if not texts:
            return {}
        return _batch_hits(self, texts, qids, k, threads, "texts")

    @java_call("closing the Lucene index")
    def close(self) -> None:
        searcher, self._searcher = getattr(self, "_searcher", None), None
        if searcher is not None:
            searcher.close()


def _impact_encoder_class() -> type:
    from pyserini.encode import QueryEncoder

    class _GivenWeights(QueryEncoder):
        """Query 'encoder' for pyserini's LuceneImpactSearcher: the query already is ``{token: int}``."""

        def __init__(self) -> None:
            super().__init__()

        def encode(self, query, **kwargs):
            return query

    return _GivenWeights


class ImpactSearcher:
    """Score = sum over query tokens of q_w * d_impact: pyserini ``LuceneImpactSearcher`` on int weights."""

    @java_call("opening the Lucene impact index")
    def __init__(self, index_dir: str | Path) -> None:
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise LuceneError(f"{index_dir}: no Lucene index folder")
        lucene = import_pyserini_lucene()
        self.index_dir = index_dir
        # min_idf=-1 keeps tokens present in every document (idf 0), which pyserini's default drops.
        self._searcher = lucene.LuceneImpactSearcher(str(index_dir), _impact_encoder_class()(),
                                                     min_idf=-1)
        self.num_docs = int(self._searcher.num_docs)
        self._batch_lock = threading.Lock()

    def _query(self, weights: Mapping[str, int], field: str) -> dict[str, int]:
        query = check_impacts(weights, field)
        if not query:
            raise InputError(field, "query has no positive impact")
        return query

    @java_call("impact search", query="weights")
    def search(self, weights: Mapping[str, int], k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, score)`` for integer query weights (see :func:`quantize_impacts`)."""
        query = self._query(weights, "weights")
        return _hits(_open(self._searcher).search(query, _check_k(k, self.num_docs)))

    @java_call("impact batch search")
    def batch_search(
        self, queries: Sequence[Mapping[str, int]], qids: Sequence[str] | None = None, k: int = 10,
        threads: int = 1,
    ) -> dict[str, list[tuple[str, float]]]:
        """Top-``k`` hits per query id for a batch of integer-weighted queries, on Java threads."""
        encoded = [self._query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        qids = _check_qids(qids, len(encoded))
        if not encoded:
            return {}
        return _batch_hits(self, encoded, qids, k, threads, "queries")

    @java_call("closing the Lucene impact index")
    def close(self) -> None:
        searcher, self._searcher = getattr(self, "_searcher", None), None
        if searcher is not None:
            searcher.close()
