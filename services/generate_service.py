"""gRPC GenerateService (``protos/generate.proto``): RAG answers streamed token by token.

One request: retrieve the top-``k`` chunks of the served RAG corpus, generate with the chunk cache
(:class:`retrieval.rag.pipeline.RagPipeline`), stream ``text`` pieces, then one ``summary`` with the
retrieved chunk ids, the whole answer and the request's cache statistics. Status codes: a blank or
over-long question, or ``k`` / ``max_new_tokens`` out of range, INVALID_ARGUMENT naming the field; no
chunk matching the question NOT_FOUND; the client's deadline DEADLINE_EXCEEDED (checked while waiting for
the model and between tokens); more than ``GenerateLimits.max_pending`` requests at once
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from retrieval.rag.engine import GenerationStats
from retrieval.rag.pipeline import Answer, RagPipeline
from services.api import generate_pb2, generate_pb2_grpc
from services.status import RequestError, guarded, internal_message, status_of
from sparsekit.errors import ArtifactError, InputError, NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateLimits:
    """Per-request bounds of the Generate service."""

    max_question_chars: int = 2000
    max_k: int = 10
    default_k: int = 5
    max_new_tokens: int = 512
    default_new_tokens: int = 64
    # Generate requests admitted at once: one generates, the others wait for the model; more are refused
    # RESOURCE_EXHAUSTED. The server adds this many threads to its pool, so waiting generations never
    # hold the workers that answer Search, Recommend and Health.
    max_pending: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.default_k <= self.max_k or not 1 <= self.default_new_tokens <= self.max_new_tokens:
            raise ValueError(f"inconsistent limits: {self}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")


def _bounded(value: int, default: int, top: int, field: str) -> int:
    value = value or default
    if value > top:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, field, f"must be in 1..{top}, got {value}")
    return value


def _summary(answer: Answer) -> generate_pb2.GenerateSummary:
    stats: GenerationStats = answer.result.stats
    cache = generate_pb2.CacheStats(
        policy=stats.policy, prompt_tokens=stats.prompt_tokens, prefill_tokens=stats.prefill_tokens,
        reused_tokens=stats.reused_tokens, chunk_hits=dict(stats.chunk_hits), chunk_misses=stats.chunk_misses,
        ttft_ms=stats.ttft_s * 1e3, total_ms=stats.total_s * 1e3, new_tokens=stats.new_tokens)
    chunks = [generate_pb2.RetrievedChunk(chunk_id=c.id, score=c.score, rank=c.rank) for c in answer.chunks]
    return generate_pb2.GenerateSummary(chunks=chunks, answer=answer.result.text, cache=cache)


class GenerateServicer(generate_pb2_grpc.GenerateServiceServicer):
    """Implements Generate over one :class:`RagPipeline`."""

    def __init__(self, pipeline: RagPipeline, limits: GenerateLimits | None = None) -> None:
        self.pipeline = pipeline
        self.limits = limits or GenerateLimits()
        self._pending = 0
        self._admission = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests admitted and not yet finished (generating or waiting for the model)."""
        return self._pending

    def _admit(self) -> bool:
        with self._admission:
            if self._pending >= self.limits.max_pending:
                return False
            self._pending += 1
            return True

    def _leave(self) -> None:
        with self._admission:
            self._pending -= 1

    def _validate(self, request: generate_pb2.GenerateRequest) -> tuple[str, int, int]:
        question = request.question
        if not question.strip():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "question", "must not be blank")
        if len(question) > self.limits.max_question_chars:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "question",
                               f"{len(question)} characters; at most {self.limits.max_question_chars}")
        k = _bounded(request.k, self.limits.default_k, self.limits.max_k, "k")
        new = _bounded(request.max_new_tokens, self.limits.default_new_tokens, self.limits.max_new_tokens,
                       "max_new_tokens")
        return question, k, new

    def Generate(self, request: generate_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[generate_pb2.GenerateResponse]:
        question, k, new = guarded(context, lambda: self._validate(request), "Generate")
        if not self._admit():
            busy = f"the generator is busy: {self.limits.max_pending} requests in progress; retry later"
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
        try:
            yield from self._stream(question, k, new, context)
        finally:
            self._leave()

    def _stream(self, question: str, k: int, new: int,
                context: grpc.ServicerContext) -> Iterator[generate_pb2.GenerateResponse]:
        try:
            for event in self.pipeline.stream(question, k, new, wait=context.time_remaining(),
                                              active=context.is_active):
                if not context.is_active():
                    return
                if isinstance(event, Answer):
                    yield generate_pb2.GenerateResponse(summary=_summary(event))
                else:
                    yield generate_pb2.GenerateResponse(text=event)
        except (RequestError, InputError, NotFoundError, ArtifactError) as exc:
            context.abort(status_of(exc), str(exc))
        except TimeoutError as exc:  # the deadline passed while another request held the model
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except Exception as exc:  # an engine fault: log it, tell the client only what failed
            log.exception("Generate failed")
            context.abort(grpc.StatusCode.INTERNAL, internal_message("Generate", exc))
