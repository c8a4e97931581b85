"""The RAG generation engine: chunk-cached prefill (Cache-Craft and baselines) + greedy decoding.

Public entry point of :mod:`retrieval.rag` (Cache-Craft, SIGMOD 2025; CacheBlend, EuroSys 2025; vLLM
prefix caching, SOSP 2023). A request ``(question, chunks)`` is laid out as header + chunks + question
(:class:`~retrieval.rag.generator.PromptLayout`); the policy (:mod:`retrieval.rag.policies`) plans
which cached KV to reuse; the engine places it with the RoPE fix (:mod:`retrieval.rag.rope`), runs
:func:`~retrieval.rag.selective_prefill.selective_prefill` over the positions to compute, lets the
policy store what it computed, then decodes greedily with the HF model over the assembled cache.

``prefill_tokens`` counts layer-equivalent tokens: the number of tokens run through each layer,
summed over layers, divided by the layer count and rounded up (CacheBlend's check layer runs every
reused token through layer 0 only, which counts 1/30 each); ``reused_tokens`` is the rest of the
prompt. Requests are serialised through the cache by a lock; decoding runs on a private copy of the KV.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.rag.chunk_cache import CacheConfig, ChunkCache
from retrieval.rag.generator import Generator, PromptLayout
from retrieval.rag.kv_state import PromptKV
from retrieval.rag.policies import Plan, Policy, make_policy, segments_of
from retrieval.rag.rope import rerotate_keys
from retrieval.rag.selective_prefill import selective_prefill
from sparsekit.errors import InputError

DEFAULT_HOST_BYTES = 1 << 30
DEFAULT_DEVICE_BYTES = 1 << 30  # the GPU-memory tier: used only when CUDA is available


@dataclass
class GenerationStats:
    policy: str
    prompt_tokens: int          # total prompt length
    prefill_tokens: int         # tokens whose KV was actually computed this request
    reused_tokens: int          # tokens whose KV came from the cache
    chunk_hits: dict[str, int]  # tier name ("device", "host", "disk") -> chunks served from it
    chunk_misses: int
    ttft_s: float               # request start (``started``, else the prefill call) -> first token chosen
    total_s: float
    new_tokens: int


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stats: GenerationStats


@dataclass
class Prefilled:
    """A prompt after prefill: its layout, assembled KV, next-token logits and (partial) stats."""

    layout: PromptLayout
    kv: PromptKV
    logits: torch.Tensor
    stats: GenerationStats
    started: float
    plan: Plan
    computed: torch.Tensor  # [tokens] bool: KV computed in every layer this request


def _check_request(question: object, chunks: object, max_new_tokens: object) -> None:
    if not isinstance(question, str):
        raise InputError("question", f"must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InputError("question", "must not be empty")
    if isinstance(chunks, str) or not isinstance(chunks, Sequence):
        raise InputError("chunks", "must be a sequence of strings")
    if len(chunks) == 0:
        raise InputError("chunks", "no chunks (empty retrieval result)")
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, str) or not chunk.strip():
            raise InputError("chunks", f"chunk {i} is empty or not a string")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError("max_new_tokens", f"must be an integer >= 1, got {max_new_tokens!r}")


class RagEngine:
    """Generate answers from retrieved chunks with one KV reuse policy and one chunk cache.

    ``policy``: a name from :data:`~retrieval.rag.policies.POLICIES` or a policy object. ``cache``:
    defaults to an in-memory host cache of 1 GiB for the caching policies (none for ``full``); a
    cache built for another model key raises :class:`InputError`.
    """

    def __init__(self, generator: Generator, policy: str | Policy = "cache-craft",
                 cache: ChunkCache | None = None) -> None:
        self.generator = generator
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        if cache is None and self.policy.uses_cache:
            cache = ChunkCache(CacheConfig(host_bytes=DEFAULT_HOST_BYTES), generator.cache_key)
        if cache is not None and cache.model_key != generator.cache_key:
            raise InputError("cache", f"built for {cache.model_key!r}, generator is {generator.cache_key!r}")
        self.cache = cache if self.policy.uses_cache else None
        self.last_result: GenerationResult | None = None
        self._lock = threading.Lock()

    def _assemble(self, layout: PromptLayout, reuse) -> PromptKV:
        gen, cfg = self.generator, self.generator.config
        kv = PromptKV.empty(gen.num_layers, cfg.num_key_value_heads, len(layout), cfg.head_dim, gen.dtype,
                            gen.device)
        for piece in reuse:
            keys = rerotate_keys(piece.keys.to(gen.device), piece.old_start, piece.start, gen.inv_freq)
            kv.write(piece.start, keys, piece.values)
        return kv

    def prefill(self, question: str, chunks: Sequence[str], max_new_tokens: int = 64,
                started: float | None = None) -> Prefilled:
        """Validate, plan, assemble and selectively prefill one request (stores into the cache).

        ``started`` (a ``time.perf_counter()`` value) is when the request began, for TTFT and total time:
        the pipeline passes the moment it received the question, so retrieval and the wait for the model
        count; by default the timers start here."""
        started = time.perf_counter() if started is None else started
        _check_request(question, chunks, max_new_tokens)
        layout = self.generator.layout(question, chunks, max_new_tokens)
        segments = segments_of(layout)
        segment_of = torch.cat([torch.full((len(s.tokens),), s.index) for s in segments])
        with self._lock:
            plan = self.policy.plan(segments, self.cache)
            kv = self._assemble(layout, plan.reuse)
            result = selective_prefill(self.generator.model, torch.tensor(layout.ids), kv, plan.selected,
                                       segment_of=segment_of, refine=plan.refine)
            self.policy.store(segments, plan, kv, result, self.cache)
        computed = math.ceil(result.token_layers / self.generator.num_layers)
        stats = GenerationStats(self.policy.name, len(layout), computed, len(layout) - computed,
                                plan.chunk_hits, plan.chunk_misses, 0.0, 0.0, 0)
        return Prefilled(layout, kv, result.logits, stats, started, plan, result.computed)

    @torch.no_grad()
    def decode(self, prefilled: Prefilled, max_new_tokens: int = 64) -> Iterator[int]:
        """Greedy token ids after the prompt (end-of-turn excluded); sets ``stats.ttft_s`` at the first."""
        model, eos = self.generator.model, self.generator.eos_ids
        cache = prefilled.kv.to_dynamic_cache()
        token = int(prefilled.logits.argmax())
        prefilled.stats.ttft_s = time.perf_counter() - prefilled.started
        for step in range(max_new_tokens):
            if token in eos:
                return
            yield token
            if step + 1 < max_new_tokens:
                out = model(input_ids=torch.tensor([[token]], device=self.generator.device), cache=cache,
                            use_cache=True)
                token = int(out.logits[0, -1].argmax())

    def stream(self, question: str, chunks: Sequence[str], max_new_tokens: int = 64,
               started: float | None = None) -> Iterator[str]:
        """Yields decoded text pieces as tokens are generated; afterwards self.last_result holds it."""
        prefilled = self.prefill(question, chunks, max_new_tokens, started)
        ids: list[int] = []
        text = ""
        for token in self.decode(prefilled, max_new_tokens):
            ids.append(token)
            decoded = self.generator.decode(ids)
            if decoded.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the next token
            piece, text = decoded[len(text):], decoded
            if piece:
                yield piece
        final = self.generator.decode(ids)
        if len(final) > len(text):
            yield final[len(text):]
        stats = prefilled.stats
        stats.total_s = time.perf_counter() - prefilled.started
        stats.new_tokens = len(ids)
        self.last_result = GenerationResult(final, ids, stats)

    def generate(self, question: str, chunks: Sequence[str], max_new_tokens: int = 64) -> GenerationResult:
        """Run :meth:`stream` to the end and return its result."""
        for _ in self.stream(question, chunks, max_new_tokens):
            pass
        return self.last_result


def open_engine(policy: str = "cache-craft", gguf_path: str | Path | None = None,
                cache_dir: str | Path | None = None, host_bytes: int = DEFAULT_HOST_BYTES,
                disk_bytes: int = 4 << 30, device: str | None = None,
                device_bytes: int = DEFAULT_DEVICE_BYTES) -> RagEngine:
    """Load the generator and build an engine with a fresh cache (disk tier at ``cache_dir`` when given;
    a ``device_bytes`` GPU-memory tier above host RAM when CUDA is available).

    With a ``cache_dir``, the RAM tiers are spilled to disk at interpreter exit, so a one-shot CLI run
    leaves its chunk KV for the next one. A directory of another model raises ArtifactError.
    """
    chosen = make_policy(policy)
    config = CacheConfig(device_bytes=device_bytes, host_bytes=host_bytes,
                         disk_bytes=disk_bytes if cache_dir else 0,
                         directory=Path(cache_dir) if cache_dir else None)
    generator = Generator.load(gguf_path, device=device)
    cache = ChunkCache(config, generator.cache_key) if chosen.uses_cache else None
    if cache is not None and cache_dir:
        atexit.register(cache.close)
    return RagEngine(generator, chosen, cache)
