"""gRPC SearchService (``protos/search.proto``) over any opened index (served by :mod:`services.server`).

Serves a name -> :class:`retrieval.index.SearchIndex` map. Bad requests get INVALID_ARGUMENT naming
the field, an unknown index NOT_FOUND, an over-limit request RESOURCE_EXHAUSTED (the transport also
enforces the 4 MiB message limit), a query past its deadline DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc

from retrieval.index import SearchIndex
from services.api import search_pb2, search_pb2_grpc
from services.search_validation import SearchLimits, validate_batch, validate_search
from services.status import RequestError, guarded
from sparsekit.errors import InputError

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
MODE_KIND = {
    search_pb2.SEARCH_MODE_BM25: "bm25",
    search_pb2.SEARCH_MODE_SPARSE: "sparse",
    search_pb2.SEARCH_MODE_DENSE: "dense",
    search_pb2.SEARCH_MODE_BIGRANULAR: "bigranular",
    search_pb2.SEARCH_MODE_HYBRID: "hybrid",
}


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Implements Search, BatchSearch and ListIndexes."""

    def __init__(self, indexes: Mapping[str, SearchIndex], limits: SearchLimits | None = None,
                 threads: int = 1) -> None:
        self.indexes = dict(indexes)
        self.limits = limits or SearchLimits()
        self.threads = threads

    def _index(self, name: str, field: str) -> SearchIndex:
        if name not in self.indexes:
            raise RequestError(grpc.StatusCode.NOT_FOUND, field,
                               f"unknown index {name!r}; serving {sorted(self.indexes)}")
        return self.indexes[name]

    def _check_mode(self, req: search_pb2.SearchRequest, index: SearchIndex, field: str) -> None:
        wanted = MODE_KIND.get(req.mode)
        if req.mode and wanted is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.mode",
                               f"unknown mode {req.mode}; known: {sorted(MODE_KIND)}")
        if req.mode and wanted != index.kind:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.mode",
                               f"index {req.index!r} serves {index.kind!r}, not {wanted!r}")
        if req.WhichOneof("query") == "sparse" and not hasattr(index, "search_sparse"):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.sparse",
                               f"index {req.index!r} ({index.kind}) takes text queries only")
        if req.WhichOneof("query") != "sparse" and not getattr(index, "takes_text", True):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.text",
                               f"index {req.index!r} (a raw inverted index, no query encoder) takes "
                               "sparse queries only")

    def _run_one(self, req: search_pb2.SearchRequest, k: int, field: str) -> search_pb2.SearchResponse:
        index = self._index(req.index, f"{field}.index")
        self._check_mode(req, index, field)
        start = time.perf_counter()
        if req.WhichOneof("query") == "sparse":
            try:
                hits = index.search_sparse(list(req.sparse.indices), list(req.sparse.values), k)
            except InputError as exc:  # the index names "query.indices[j]": name the request field
                if not exc.source.startswith("query"):
                    raise
                raise InputError(f"{field}.sparse{exc.source.removeprefix('query')}", exc.reason) from exc
        else:
            try:
                hits = index.search(req.text, k)
            except InputError as exc:  # the engine names its argument ("text" / "query"): name the field
                if exc.source not in ("text", "query"):
                    raise
                raise InputError(f"{field}.text", exc.reason) from exc
        return _response(req.index, hits, time.perf_counter() - start)

    def Search(self, request: search_pb2.SearchRequest,
               context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        def work():
            k = validate_search(request, self.limits)
            return self._run_one(request, k, "request")

        return guarded(context, work, "search")

    def BatchSearch(self, request: search_pb2.BatchSearchRequest,
                    context: grpc.ServicerContext) -> search_pb2.BatchSearchResponse:
        """Text queries to one index at one k run as one ``batch_search`` (the dense encoders embed them
        together, on ``threads`` engine threads); each response's ``took_ms`` is its share of that call.
        Sparse queries run one by one. Every request is checked before any search runs."""
        def work():
            ks = validate_batch(request, self.limits)
            for i, req in enumerate(request.requests):
                self._check_mode(req, self._index(req.index, f"requests[{i}].index"), f"requests[{i}]")
            out: dict[int, search_pb2.SearchResponse] = {}
            for group in self._groups(request, ks):
                self._check_deadline(context, len(out), len(ks))
                out.update(self._run_group(request, ks, group))
            return search_pb2.BatchSearchResponse(responses=[out[i] for i in range(len(ks))])

        return guarded(context, work, "search")

    @staticmethod
    def _groups(request: search_pb2.BatchSearchRequest, ks: list[int]) -> list[list[int]]:
        """Request positions grouped by (index, k) for text queries; each sparse query alone."""
        groups: dict[tuple[str, int], list[int]] = {}
        single = []
        for i, (req, k) in enumerate(zip(request.requests, ks, strict=True)):
            if req.WhichOneof("query") == "sparse":
                single.append([i])
            else:
                groups.setdefault((req.index, k), []).append(i)
        return [*groups.values(), *single]

    @staticmethod
    def _check_deadline(context: grpc.ServicerContext, done: int, total: int) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "requests",
                               f"deadline passed after {done} of {total} queries")

    def _run_group(self, request: search_pb2.BatchSearchRequest, ks: list[int],
                   group: list[int]) -> dict[int, search_pb2.SearchResponse]:
        first = request.requests[group[0]]
        if len(group) == 1:
            return {group[0]: self._run_one(first, ks[group[0]], f"requests[{group[0]}]")}
        index = self.indexes[first.index]
        start = time.perf_counter()
        try:
            hits = index.batch_search([request.requests[i].text for i in group], ks[group[0]], self.threads)
        except InputError:  # find the query at fault, to name its request
            for i in group:
                self._run_one(request.requests[i], ks[i], f"requests[{i}]")
            raise
        share = (time.perf_counter() - start) / len(group)
        return {i: _response(first.index, h, share) for i, h in zip(group, hits, strict=True)}

    def ListIndexes(self, request: search_pb2.ListIndexesRequest,
                    context: grpc.ServicerContext) -> search_pb2.ListIndexesResponse:
        infos = [search_pb2.IndexInfo(name=n, kind=ix.kind, num_docs=ix.num_docs)
                 for n, ix in sorted(self.indexes.items())]
        return search_pb2.ListIndexesResponse(indexes=infos)


def _response(name: str, hits: list[tuple[str, float]], seconds: float) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(
        index=name,
        hits=[search_pb2.Hit(doc_id=d, score=float(s), rank=r) for r, (d, s) in enumerate(hits, 1)],
        took_ms=seconds * 1000.0,
    )
