"""gRPC SearchService (``protos/search.proto``) over any opened index, with health and reflection.

Serves a name -> :class:`retrieval.index.SearchIndex` map. Bad requests get INVALID_ARGUMENT naming
the field, an unknown index NOT_FOUND, an over-limit request RESOURCE_EXHAUSTED (the transport also
enforces the 4 MiB message limit), a query past its deadline DEADLINE_EXCEEDED. The standard
``grpc.health.v1`` service reports SERVING once the indexes are loaded, and server reflection lists
the services.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from retrieval.index import SearchIndex
from services.api import generate_pb2, generate_pb2_grpc, recommend_pb2_grpc, search_pb2, search_pb2_grpc
from services.recommend_service import SERVICE_NAME as RECOMMEND_SERVICE
from services.recommend_service import RecommendServicer
from services.status import guarded
from services.validation import Limits, RequestError, validate_batch, validate_search
from sparsekit.errors import InputError

if TYPE_CHECKING:  # the Generate service pulls in transformers: imported only where it is served
    from services.generate_service import GenerateServicer

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
GENERATE_SERVICE = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name
MODE_KIND = {
    search_pb2.SEARCH_MODE_BM25: "bm25",
    search_pb2.SEARCH_MODE_SPARSE: "sparse",
    search_pb2.SEARCH_MODE_DENSE: "dense",
    search_pb2.SEARCH_MODE_BIGRANULAR: "bigranular",
    search_pb2.SEARCH_MODE_HYBRID: "hybrid",
}


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Implements Search, BatchSearch and ListIndexes."""

    def __init__(self, indexes: Mapping[str, SearchIndex], limits: Limits | None = None,
                 threads: int = 1) -> None:
        self.indexes = dict(indexes)
        self.limits = limits or Limits()
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

    def _run_one(self, req: search_pb2.SearchRequest, k: int, field: str) -> search_pb2.SearchResponse:
        index = self._index(req.index, f"{field}.index")
        self._check_mode(req, index, field)
        start = time.perf_counter()
        if req.WhichOneof("query") == "sparse":
            hits = index.search_sparse(list(req.sparse.indices), list(req.sparse.values), k)
        else:
            hits = index.search(req.text, k)
        return _response(req.index, hits, time.perf_counter() - start)

    def Search(self, request: search_pb2.SearchRequest,
               context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        def work():
            k = validate_search(request, self.limits)
            return self._run_one(request, k, "request")

        return guarded(context, work, "search")

    def BatchSearch(self, request: search_pb2.BatchSearchRequest,
                    context: grpc.ServicerContext) -> search_pb2.BatchSearchResponse:
        def work():
            ks = validate_batch(request, self.limits)
            out = []
            for i, (req, k) in enumerate(zip(request.requests, ks, strict=True)):
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "requests",
                                       f"deadline passed after {i} of {len(ks)} queries")
                out.append(self._run_one(req, k, f"requests[{i}]"))
            return search_pb2.BatchSearchResponse(responses=out)

        return guarded(context, work, "search")

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


@dataclass
class ServerConfig:
    """How to serve: address, worker threads and request limits."""

    address: str = "127.0.0.1:50051"
    workers: int = 4
    engine_threads: int = 1
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        _check_address(self.address)


def make_server(indexes: Mapping[str, SearchIndex], config: ServerConfig | None = None,
                recommend: RecommendServicer | None = None,
                generate: GenerateServicer | None = None) -> tuple[grpc.Server, int]:
    """Build (not start) a server with Search (+ Recommend, + Generate when given) + health + reflection;
    return it and its bound port."""
    config = config or ServerConfig()
    size = config.limits.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers),
        # no SO_REUSEPORT: a second server on a port in use must fail, not share it silently
        options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", 4 * size),
                 ("grpc.so_reuseport", 0)],
    )
    search_pb2_grpc.add_SearchServiceServicer_to_server(
        SearchServicer(indexes, config.limits, config.engine_threads), server)
    services = [SERVICE_NAME]
    if recommend is not None:
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(recommend, server)
        services.append(RECOMMEND_SERVICE)
    if generate is not None:
        generate_pb2_grpc.add_GenerateServiceServicer_to_server(generate, server)
        services.append(GENERATE_SERVICE)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*services, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as exc:  # grpc raises this when the port is taken or the host cannot be bound
        raise OSError(f"cannot bind {config.address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind {config.address}")
    return server, port


def _check_address(address: str) -> None:
    """``host:port`` with a port in 0..65535 (0: any free port); grpc would otherwise wrap the port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError("address", f"expected host:port with a port in 0..65535, got {address!r}")
