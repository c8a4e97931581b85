"""gRPC SearchService: results, status codes for bad input, health and reflection.

Uses a small in-memory index implementing the SearchIndex protocol, so these tests exercise the
service layer alone; tests/retrieval/test_bm25_index.py and test_cli_e2e.py cover the real engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.api import search_pb2, search_pb2_grpc
from services.search_validation import SearchLimits
from services.server import ServerConfig, drain, make_server
from sparsekit.errors import InputError


class WordOverlapIndex:
    """Scores documents by the number of query words they contain."""

    kind = "bm25"

    def __init__(self, docs: dict[str, str]) -> None:
        self.docs = {d: set(t.lower().split()) for d, t in docs.items()}

    @property
    def num_docs(self) -> int:
        return len(self.docs)

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        words = set(text.lower().split())
        scored = [(d, float(len(words & w))) for d, w in self.docs.items() if words & w]
        return sorted(scored, key=lambda x: (-x[1], x[0]))[:k]

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
        return [self.search(t, k) for t in texts]


class SparseIndex(WordOverlapIndex):
    kind = "sparse"

    def search_sparse(self, indices: list[int], values: list[float], k: int) -> list[tuple[str, float]]:
        return [("d1", float(sum(values)))][:k]


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    docs = {"d1": "sparse retrieval with inverted index", "d2": "dense retrieval", "d3": "cooking pasta"}
    limits = SearchLimits(max_k=50, max_batch=4)
    server, port = make_server({"toy": WordOverlapIndex(docs), "learned": SparseIndex(docs)},
                               ServerConfig(address="127.0.0.1:0", limits=limits))
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(grace=None)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> search_pb2_grpc.SearchServiceStub:
    return search_pb2_grpc.SearchServiceStub(channel)


def _req(**kw) -> search_pb2.SearchRequest:
    return search_pb2.SearchRequest(**{"index": "toy", **kw})


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


def test_search_returns_ranked_hits(stub) -> None:
    resp = stub.Search(_req(text="sparse retrieval", k=2), timeout=10)
    assert [(h.doc_id, h.rank) for h in resp.hits] == [("d1", 1), ("d2", 2)]
    assert resp.hits[0].score == 2.0 and resp.index == "toy"
    assert len(stub.Search(_req(text="retrieval"), timeout=10).hits) == 2  # k=0 -> default 10


@pytest.mark.parametrize(("request_kw", "field"), [
    ({"text": "   "}, "request.text"),
    ({}, "request.query"),
    ({"text": "x", "k": 51}, "request.k"),
    ({"index": "", "text": "x"}, "request.index"),
    ({"sparse": search_pb2.SparseVector(indices=[1, 2], values=[1.0])}, "request.sparse"),
    ({"sparse": search_pb2.SparseVector(indices=[2, 1], values=[1.0, 1.0])}, "request.sparse.indices[1]"),
    ({"sparse": search_pb2.SparseVector(indices=[1, 1], values=[1.0, 1.0])}, "request.sparse.indices[1]"),
    ({"sparse": search_pb2.SparseVector(indices=[1, 2], values=[1.0, float("nan")])},
     "request.sparse.values[1]"),
    ({"sparse": search_pb2.SparseVector(indices=[1], values=[1.0])}, "request.sparse"),  # bm25: text only
    ({"text": "x", "mode": search_pb2.SEARCH_MODE_DENSE}, "request.mode"),
    ({"text": "x", "mode": 99}, "request.mode"),  # a mode this server does not know
])
def test_bad_requests_are_invalid_argument(stub, request_kw, field) -> None:
    code, details = _code(stub.Search, _req(**request_kw))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":"), details


def test_raw_sparse_query_reaches_a_sparse_index(stub) -> None:
    vec = search_pb2.SparseVector(indices=[3, 9], values=[0.5, 1.5])
    resp = stub.Search(search_pb2.SearchRequest(index="learned", sparse=vec, k=3), timeout=10)
    assert [(h.doc_id, h.score) for h in resp.hits] == [("d1", 2.0)]


def test_unknown_index_is_not_found(stub) -> None:
    code, details = _code(stub.Search, _req(index="nope", text="x"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details and "toy" in details


def test_oversized_requests_are_resource_exhausted(stub) -> None:
    code, _ = _code(stub.Search, _req(text="word " * (5 * 1024 * 1024 // 5)))  # > 4 MiB message
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    batch = search_pb2.BatchSearchRequest(requests=[_req(text="x")] * 5)  # limit is 4
    code, details = _code(stub.BatchSearch, batch)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("requests:")


def test_batch_search_and_field_paths(stub) -> None:
    batch = search_pb2.BatchSearchRequest(requests=[_req(text="dense"), _req(text="pasta", k=1)])
    resp = stub.BatchSearch(batch, timeout=10)
    assert [[h.doc_id for h in r.hits] for r in resp.responses] == [["d2"], ["d3"]]
    bad = search_pb2.BatchSearchRequest(requests=[_req(text="ok"), _req(text="")])
    code, details = _code(stub.BatchSearch, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("requests[1].text:")
    code, _ = _code(stub.BatchSearch, search_pb2.BatchSearchRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT


class CountingIndex(WordOverlapIndex):
    """Counts batch calls, and refuses a query holding "forbidden" as the engine would (field ``text``)."""

    batches: ClassVar[list[list[str]]] = []

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        if "forbidden" in text:
            raise InputError("text", "too many clauses")
        return super().search(text, k)

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
        CountingIndex.batches.append(list(texts))
        return [self.search(t, k) for t in texts]


def test_batch_search_runs_each_index_and_k_as_one_engine_batch() -> None:
    docs = {"d1": "sparse retrieval with inverted index", "d2": "dense retrieval", "d3": "cooking pasta"}
    server, port = make_server({"a": CountingIndex(docs), "b": WordOverlapIndex(docs)},
                               ServerConfig(address="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            texts = ["dense", "pasta", "retrieval", "index"]
            reqs = [search_pb2.SearchRequest(index="a", text=t, k=2) for t in texts]
            reqs.insert(2, search_pb2.SearchRequest(index="b", text="pasta", k=2))
            resp = stub.BatchSearch(search_pb2.BatchSearchRequest(requests=reqs), timeout=10)
            want = [WordOverlapIndex(docs).search(r.text, 2) for r in reqs]
            assert [[(h.doc_id, h.score) for h in r.hits] for r in resp.responses] == want
            assert [r.index for r in resp.responses] == ["a", "a", "b", "a", "a"]
            assert CountingIndex.batches == [texts]  # one engine call for index a at k 2
            reqs[3] = search_pb2.SearchRequest(index="a", text="forbidden", k=2)
            code, details = _code(stub.BatchSearch, search_pb2.BatchSearchRequest(requests=reqs))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("requests[3].text:")
    finally:
        server.stop(grace=None)


def test_list_indexes(stub) -> None:
    infos = stub.ListIndexes(search_pb2.ListIndexesRequest(), timeout=10).indexes
    assert [(i.name, i.kind, i.num_docs) for i in infos] == [("learned", "sparse", 3), ("toy", "bm25", 3)]


def test_health_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sparsekit.v1.SearchService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"sparsekit.v1.SearchService", "grpc.health.v1.Health"} <= names


def test_drain_reports_not_serving_while_still_answering_then_stops() -> None:
    servicer = health.HealthServicer()
    server, port = make_server({"toy": WordOverlapIndex({"d1": "sparse retrieval"})},
                               ServerConfig(address="127.0.0.1:0"), health_servicer=servicer)
    server.start()
    stopper = threading.Thread(target=drain, args=(server, servicer, 2.0, 1.0))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        serving = health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        stopper.start()
        time.sleep(0.3)
        for service in ("", "sparsekit.v1.SearchService"):  # load balancers see it leaving ...
            reply = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        hits = search_pb2_grpc.SearchServiceStub(ch).Search(_req(text="sparse", k=1), timeout=10)
        assert [h.doc_id for h in hits.hits] == ["d1"]  # ... while it still answers
        stopper.join(timeout=20)
        assert not stopper.is_alive()
        with pytest.raises(grpc.RpcError) as info:
            check(health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(ValueError, match="drain_s"):
        drain(server, servicer, -1.0)


def test_an_out_of_vocabulary_term_names_the_request_field(tmp_path) -> None:
    """The engine's own check (term id < vocabulary size) is reported as ``request.sparse.indices[j]``."""
    import numpy as np
    import scipy.sparse as sp

    from retrieval.index.inverted import InvertedIndex, build_inverted_index

    vectors = sp.csr_matrix(np.array([[1.0, 0, 2.0], [0, 3.0, 0]], dtype=np.float32))
    build_inverted_index(["a", "b"], vectors, tmp_path / "ix")
    index = InvertedIndex.open(tmp_path / "ix")
    server, port = make_server({"real": index}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            vec = search_pb2.SparseVector(indices=[1, 7], values=[1.0, 1.0])
            code, details = _code(stub.Search, search_pb2.SearchRequest(index="real", sparse=vec, k=2))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("request.sparse.indices[1]: term id 7 out of range"), details
            one = search_pb2.SparseVector(indices=[1], values=[1.0])
            # the first real search may compile the engine's numba kernels: a generous deadline
            ok = stub.Search(search_pb2.SearchRequest(index="real", sparse=one, k=2), timeout=120)
            assert [h.doc_id for h in ok.hits] == ["b"]
            code, details = _code(stub.Search, search_pb2.SearchRequest(index="real", text="cats", k=2))
            assert code == grpc.StatusCode.INVALID_ARGUMENT  # not FAILED_PRECONDITION with a server path
            assert details.startswith("request.text: index 'real'") and str(tmp_path) not in details
    finally:
        server.stop(grace=None)


def test_a_full_batch_of_large_responses_reaches_the_client() -> None:
    """256 queries x top-1000 hits exceed gRPC's 4 MiB default: the server may send its response limit
    and SearchClient accepts as much (it used to fail after the server had done the work)."""
    from services.search_client import SearchClient

    docs = {f"doc-{i:05d}-abcdefgh": "word" for i in range(1000)}  # responses of ~9.5 MB
    server, port = make_server({"toy": WordOverlapIndex(docs)}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    client = SearchClient(f"127.0.0.1:{port}")
    try:
        results = client.batch_search("toy", ["word"] * 256, k=1000, batch=256)
        assert len(results) == 256 and all(len(hits) == 1000 for hits in results)
    finally:
        client.close()
        server.stop(grace=None)


def test_wait_ready_with_an_index_checks_that_the_server_serves_it() -> None:
    """Health alone answers SERVING for whatever server holds the port (another section's, say)."""
    from services.search_client import SearchClient

    server, port = make_server({"toy": WordOverlapIndex({"d": "word"})}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    client = SearchClient(f"127.0.0.1:{port}")
    try:
        client.wait_ready(timeout=10)
        client.wait_ready(timeout=10, index="toy")
        with pytest.raises(LookupError, match=r"serves \['toy'\], not index 'scifact'"):
            client.wait_ready(timeout=10, index="scifact")
    finally:
        client.close()
        server.stop(grace=None)


def test_an_engine_refusal_names_the_request_whether_or_not_its_query_shares_a_batch() -> None:
    """A text query alone in its (index, k) group, and a single Search, name their own field too."""
    docs = {"d1": "sparse retrieval", "d2": "dense retrieval"}
    server, port = make_server({"a": CountingIndex(docs)}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            reqs = [search_pb2.SearchRequest(index="a", text="dense", k=2),
                    search_pb2.SearchRequest(index="a", text="forbidden", k=1)]  # its own group
            code, details = _code(stub.BatchSearch, search_pb2.BatchSearchRequest(requests=reqs))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("requests[1].text:"), details
            code, details = _code(stub.Search, reqs[1])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request.text:"), details
    finally:
        server.stop(grace=None)


def test_an_engine_fault_is_internal_and_keeps_its_details_in_the_server_log(caplog) -> None:
    """The client learns what failed and the error type; the message (Java text, server paths) is logged."""
    class Broken(WordOverlapIndex):
        def search(self, text: str, k: int) -> list[tuple[str, float]]:
            raise RuntimeError("NullPointerException at /srv/indexes/secret")

    server, port = make_server({"a": Broken({"d1": "x"})}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            code, details = _code(stub.Search, search_pb2.SearchRequest(index="a", text="x", k=1))
    finally:
        server.stop(grace=None)
    assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details
    assert "secret" not in details and "NullPointer" not in details
    assert "/srv/indexes/secret" in caplog.text
