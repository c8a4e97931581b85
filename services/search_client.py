"""A small blocking client for the gRPC SearchService (used by the demo, the CLI and tests)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api import search_pb2, search_pb2_grpc
from services.search_validation import SearchLimits


class SearchClient:
    """Talks to a Sparsekit search server at ``address`` (``host:port``)."""

    def __init__(self, address: str, timeout: float = 30.0,
                 max_response_bytes: int = SearchLimits().max_response_bytes) -> None:
        # gRPC clients accept 4 MiB by default: a full BatchSearch (256 x top-1000) can be larger
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_response_bytes)])
        self.stub = search_pb2_grpc.SearchServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.address = address

    def wait_ready(self, timeout: float = 30.0, index: str | None = None) -> None:
        """Block until the server's health service reports SERVING (``grpc.RpcError`` DEADLINE_EXCEEDED when
        none answers within ``timeout``); with ``index``, also check that the server serves that index
        (another server holding the port answers health checks too)."""
        # wait_for_ready, not grpc.channel_ready_future: the future's connectivity-polling thread could
        # outlive it and raise "Channel closed!" when the client was closed right after
        status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout,
                                   wait_for_ready=True).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"server not serving (health status {status})")
        if index is not None:
            reply = self.stub.ListIndexes(search_pb2.ListIndexesRequest(), timeout=timeout)
            served = sorted(info.name for info in reply.indexes)
            if index not in served:
                raise LookupError(f"the server at {self.address} serves {served}, not index {index!r}")

    def list_indexes(self) -> list[search_pb2.IndexInfo]:
        return list(self.stub.ListIndexes(search_pb2.ListIndexesRequest(), timeout=self.timeout).indexes)

    def search(self, index: str, text: str, k: int = 10) -> list[tuple[str, float]]:
        resp = self.stub.Search(search_pb2.SearchRequest(index=index, text=text, k=k), timeout=self.timeout)
        return [(h.doc_id, h.score) for h in resp.hits]

    def batch_search(self, index: str, texts: list[str], k: int = 10, batch: int = 128
                     ) -> list[list[tuple[str, float]]]:
        """Search many texts, ``batch`` per BatchSearch call."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(texts), batch):
            reqs = [search_pb2.SearchRequest(index=index, text=t, k=k) for t in texts[start:start + batch]]
            resp = self.stub.BatchSearch(search_pb2.BatchSearchRequest(requests=reqs), timeout=self.timeout)
            out.extend([(h.doc_id, h.score) for h in r.hits] for r in resp.responses)
        return out

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
