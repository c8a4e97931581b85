"""The RAG request path (retrieval/rag/pipeline.py) without a model: what it names and what it times."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from retrieval.rag.corpus import RagCorpus
from retrieval.rag.pipeline import RagPipeline
from sparsekit.errors import InputError


class RefusingIndex:
    """An index that refuses its query the way Lucene's clause limit does (naming ``text``)."""

    kind = "toy"
    num_docs = 1

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        if len(text.split()) > 3:
            raise InputError("text", "more distinct terms than Lucene's limit of 1024 per query: shorten it")
        return [("c1", 1.0)]


class SlowIndex(RefusingIndex):
    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        time.sleep(0.2)
        return super().search(text, k)


class RecordingEngine:
    """Stands in for the generator: records when the request started, as the pipeline reports it."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.last_result = "result"

    def stream(self, question: str, chunks: list[str], max_new_tokens: int, started: float | None = None):
        self.started = started
        yield "answer"


def _pipeline(index) -> tuple[RagPipeline, RecordingEngine]:
    engine = RecordingEngine()
    return RagPipeline(RagCorpus(Path("."), {"c1": "a chunk"}, index, {}), engine, k=1), engine


def test_a_question_the_index_refuses_is_named_question() -> None:
    pipeline, _ = _pipeline(RefusingIndex())
    with pytest.raises(InputError, match=r"^question: more distinct terms"):
        pipeline.ask("one two three four five")


def test_the_request_clock_starts_before_retrieval() -> None:
    """TTFT and total time count retrieval and the wait for the model, not only the generation."""
    pipeline, engine = _pipeline(SlowIndex())
    before = time.perf_counter()
    pipeline.ask("short question")
    assert engine.started is not None and before <= engine.started <= before + 0.1


def test_a_request_whose_client_left_while_it_waited_is_not_generated() -> None:
    """Waiting for a busy model, a request polls ``active``; once its client is gone it ends without
    running the model (it used to wait on, holding its admission slot, then prefill for nobody)."""
    pipeline, engine = _pipeline(RefusingIndex())
    left_at = time.monotonic() + 0.2
    pipeline._lock.acquire()  # another request holds the model
    try:
        events = list(pipeline.stream("short question", active=lambda: time.monotonic() < left_at))
    finally:
        pipeline._lock.release()
    assert events == [] and engine.started is None
    with pytest.raises(TimeoutError):  # a deadline still ends the wait
        pipeline._lock.acquire()
        try:
            list(pipeline.stream("short question", wait=0.1))
        finally:
            pipeline._lock.release()
    assert len(list(pipeline.stream("short question"))) == 2  # free model: answer + Answer
