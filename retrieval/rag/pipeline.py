"""The RAG request path: question -> retrieve chunks -> chunk-cached generation (../shared/docs/DESIGN.md §3).

:class:`RagPipeline` joins a :class:`~retrieval.rag.corpus.RagCorpus` (chunks + learned sparse or
BM25 index) and a :class:`~retrieval.rag.engine.RagEngine` (SmolLM2 with the Cache-Craft chunk cache,
or any other policy). The prompt holds the top-``k`` chunks in retrieval order. ``stream`` yields the
answer piece by piece and then one :class:`Answer` with the retrieved chunks and the cache statistics;
the gRPC Generate service and ``sparsekit rag ask`` both drive it. Generation is serialised by a lock:
one model, one KV cache, requests take turns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from retrieval.rag.corpus import RagCorpus, RetrievedChunk
from retrieval.rag.engine import GenerationResult, RagEngine
from sparsekit.errors import InputError, NotFoundError

POLL_S = 0.05  # how often a request waiting for the model checks that its client is still there


@dataclass
class Answer:
    """A finished request: the chunks the prompt held and the generation result (text + cache stats)."""

    question: str
    chunks: list[RetrievedChunk]
    result: GenerationResult


class RagPipeline:
    """Retrieve-then-generate over one corpus and one engine."""

    def __init__(self, corpus: RagCorpus, engine: RagEngine, k: int = 5) -> None:
        self.corpus = corpus
        self.engine = engine
        self.k = k
        self._lock = threading.Lock()

    def retrieve(self, question: str, k: int | None = None) -> list[RetrievedChunk]:
        """The prompt's chunks; :class:`~sparsekit.errors.NotFoundError` when none matches."""
        try:
            chunks = self.corpus.retrieve(question, k or self.k)
        except InputError as exc:  # the index names its argument "text": here it is the question
            if exc.source != "text":
                raise
            raise InputError("question", exc.reason) from exc
        if not chunks:
            raise NotFoundError(f"no chunk of the corpus matches the question {question[:80]!r}: "
                                "nothing to answer from")
        return chunks

    def stream(self, question: str, k: int | None = None, max_new_tokens: int = 64,
               wait: float | None = None, active: Callable[[], bool] | None = None) -> Iterator[str | Answer]:
        """Yield the answer's text pieces as they are generated, then the :class:`Answer`. Its TTFT and
        total time count from this call: retrieval and the wait for the model are part of them.
        ``wait``: at most this many seconds for the model (another request may hold it), else
        :class:`TimeoutError`; ``None`` (or more than the platform's ``threading.TIMEOUT_MAX``, as gRPC
        reports a call without deadline) waits as long as it takes. ``active``: polled while waiting;
        once it returns False (the client went away) the stream ends without generating."""
        started = time.perf_counter()
        chunks = self.retrieve(question, k)
        if not self._acquire(wait, active or (lambda: True)):
            return
        try:
            yield from self.engine.stream(question, [c.text for c in chunks], max_new_tokens, started)
            result = self.engine.last_result
        finally:
            self._lock.release()
        yield Answer(question, chunks, result)

    def _acquire(self, wait: float | None, active: Callable[[], bool]) -> bool:
        """Take the model lock, polling ``active`` every ``POLL_S``; False when it turned False first."""
        forever = wait is None or wait >= threading.TIMEOUT_MAX
        deadline = None if forever else time.monotonic() + max(wait, 0.0)
        while True:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if self._lock.acquire(timeout=max(left, 0.0)):
                return True
            if not active():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the model stayed busy with other requests for {wait:.1f}s")

    def ask(self, question: str, k: int | None = None, max_new_tokens: int = 64) -> Answer:
        """Answer ``question`` in one call."""
        *_, answer = self.stream(question, k, max_new_tokens)
        assert isinstance(answer, Answer)
        return answer
