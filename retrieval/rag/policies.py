"""KV reuse policies for RAG prompts behind one interface: full, prefix, naive, CacheBlend, Cache-Craft.

A policy turns a prompt's segments (header, chunks, question suffix; :mod:`retrieval.rag.generator`)
into a :class:`Plan`: which cached KV to place where (the engine re-rotates keys to their new
positions) and which positions :func:`~retrieval.rag.selective_prefill.selective_prefill` computes.
After the prefill it stores what is worth keeping in the :class:`~retrieval.rag.chunk_cache.ChunkCache`.

- ``full``: no cache, every token computed.
- ``prefix`` (vLLM automatic prefix caching, Kwon et al., SOSP 2023): the prompt in hash-chained
  blocks of 16 tokens; only blocks of an identical prompt prefix hit; exact.
- ``naive``: reuse every cached chunk with the RoPE fix, recompute nothing but misses and the suffix
  (``recompute_ratio > 0`` recomputes that fraction of random tokens per reused chunk instead: the
  fixed-fraction random baseline).
- ``cacheblend`` (Yao et al., EuroSys 2025): run layer 0 for every token of the reused chunks, compare
  their fresh layer-1 K/V with the cached ones and keep recomputing only the ``ratio`` (15%) tokens
  per chunk with the highest KV deviation.
- ``cache-craft`` (Agarwal et al., SIGMOD 2025): per chunk, the variant with the lowest cache-fix
  overhead CFO (:mod:`retrieval.rag.reuse_score`), recomputing its top ``ceil(CFO * n)`` tokens by
  inter-chunk attention. ``alpha`` defaults to :data:`DEFAULT_ALPHA` = 2.0, the smallest of (0.5, 1,
  2) within 0.01 ROUGE-L of the best on a dev slice of 16 SciFact *train* questions disjoint from the
  benchmark's requests (``benchmarks/chunk_cache.py --tune``; dev ROUGE-L 0.93 / 0.93 / 1.0). Since
  CCI >= 0.5, alpha 2 recomputes a moved chunk whose context changed completely in full.

Shared by the chunk policies: a chunk's variants are keyed by the ids of the chunks before it, so
the variant computed under the *same* prefix is exact and reused as is (no recompute) by all of them;
the header and the question suffix are reused only under an identical prefix (the suffix only when
every chunk was served exactly, and its last token is always computed for the next-token logits). A
chunk computed or repaired under a new prefix is stored as a new variant with its attention
statistics (repaired tokens' statistics are fresh, the others' are carried over).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from retrieval.rag.chunk_cache import TIERS, CacheEntry, ChunkCache
from retrieval.rag.generator import PromptLayout
from retrieval.rag.kv_state import PromptKV
from retrieval.rag.reuse_score import ChunkAttention, cfo, densities, tokens_to_recompute
from retrieval.rag.selective_prefill import PrefillResult, Refine
from sparsekit.errors import InputError

POLICIES = ("full", "prefix", "naive", "cacheblend", "cache-craft")
DEFAULT_ALPHA = 2.0
_ROLE_TAG = {"header": "h", "chunk": "c", "suffix": "q"}


def token_hash(tokens: Sequence[int], salt: str = "") -> str:
    """Content id of a token sequence (SHA-256 of the int32 ids)."""
    return hashlib.sha256(salt.encode() + np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:24]


@dataclass(frozen=True)
class Segment:
    """One prompt segment: its role, content id, tokens, start position and the chunk ids before it."""

    role: str
    id: str
    tokens: list[int]
    start: int
    prefix: tuple[str, ...]
    index: int  # position in the segment list (0 = header)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def exact_key(self) -> str:
        """Cache key of this segment computed under exactly this prefix."""
        return f"{self.id}@{hashlib.sha256('|'.join(self.prefix).encode()).hexdigest()[:16]}"


def segments_of(layout: PromptLayout) -> list[Segment]:
    """The header, chunk and suffix segments of a prompt, with content ids and prefixes."""
    roles = ["header"] + ["chunk"] * len(layout.chunks) + ["suffix"]
    out, chunk_ids = [], []
    for index, (role, tokens, start) in enumerate(zip(roles, layout.segments, layout.starts, strict=True)):
        seg_id = f"{_ROLE_TAG[role]}:{token_hash(tokens)}"
        out.append(Segment(role, seg_id, list(tokens), start, tuple(chunk_ids), index))
        if role == "chunk":
            chunk_ids.append(seg_id)
    return out


@dataclass
class Reuse:
    """Cached KV placed at ``start`` (computed at ``old_start``: keys get re-rotated)."""

    start: int
    old_start: int
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class Choice:
    """What a chunk policy decided for one segment."""

    segment: Segment
    entry: CacheEntry | None = None
    tier: str | None = None
    exact: bool = False
    recompute: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    cfo: float | None = None


@dataclass
class Plan:
    """Cached KV to place, positions to compute, and the chunk hit accounting."""

    reuse: list[Reuse]
    selected: torch.Tensor
    chunk_hits: dict[str, int]
    chunk_misses: int
    refine: Refine | None = None
    choices: list[Choice] = field(default_factory=list)
    matched_blocks: int = 0


def _no_hits() -> dict[str, int]:
    return dict.fromkeys(TIERS, 0)


class Policy:
    """Interface: ``plan`` before the prefill, ``store`` after it."""

    name = "policy"
    uses_cache = True

    def plan(self, segments: list[Segment], cache: ChunkCache | None) -> Plan:
        raise NotImplementedError

    def store(self, segments: list[Segment], plan: Plan, kv: PromptKV, result: PrefillResult,
              cache: ChunkCache | None) -> None:
        """Keep what this request computed (default: nothing)."""


class FullRecompute(Policy):
    """No reuse: every prompt token is computed."""

    name = "full"
    uses_cache = False

    def plan(self, segments: list[Segment], cache: ChunkCache | None) -> Plan:
        chunks = sum(s.role == "chunk" for s in segments)
        return Plan([], torch.arange(segments[-1].end), _no_hits(), chunks)


@dataclass
class PrefixCaching(Policy):
    """vLLM-style automatic prefix caching over hash-chained blocks of ``block_size`` tokens."""

    block_size: int = 16
    name = "prefix"

    def _block_keys(self, ids: list[int]) -> list[str]:
        keys, prev = [], ""
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            prev = "b:" + token_hash(ids[start:start + self.block_size], salt=prev)
            keys.append(prev)
        return keys

    def plan(self, segments: list[Segment], cache: ChunkCache | None) -> Plan:
        ids = [t for s in segments for t in s.tokens]
        reuse, tiers = [], []
        for i, key in enumerate(self._block_keys(ids)):
            got = cache.get(key) if cache is not None else None
            if got is None:
                break
            start = i * self.block_size
            reuse.append(Reuse(start, start, got[0].tensors["keys"], got[0].tensors["values"]))
            tiers.append(got[1])
        matched = len(reuse) * self.block_size
        plan = Plan(reuse, torch.arange(min(matched, len(ids) - 1), len(ids)), _no_hits(), 0,
                    matched_blocks=len(reuse))
        for seg in (s for s in segments if s.role == "chunk"):
            if seg.end <= matched:
                plan.chunk_hits[tiers[(seg.end - 1) // self.block_size]] += 1
            else:
                plan.chunk_misses += 1
        return plan

    def store(self, segments: list[Segment], plan: Plan, kv: PromptKV, result: PrefillResult,
              cache: ChunkCache | None) -> None:
        if cache is None:
            return
        ids = [t for s in segments for t in s.tokens]
        for i, key in enumerate(self._block_keys(ids)[plan.matched_blocks:], start=plan.matched_blocks):
            keys, values = kv.span(i * self.block_size, (i + 1) * self.block_size)
            cache.put(CacheEntry(key, key, {"keys": keys, "values": values}, {"start": i * self.block_size}))


def _attention_of(meta: dict[str, Any]) -> ChunkAttention:
    return ChunkAttention(meta["inter_density"], meta["intra_density"], dict(meta["mass"]),
                          tuple(meta["prefix"]))


class ChunkReuse(Policy):
    """Shared machinery of the chunk policies (naive, CacheBlend, Cache-Craft); see the module docstring."""

    def _pick_variant(self, seg: Segment, cache: ChunkCache) -> tuple[str, float | None] | None:
        """Most recently stored variant (Cache-Craft overrides with the lowest CFO)."""
        variants = cache.variants(seg.id)
        if not variants:
            return None
        key, _ = max(variants, key=lambda kv: kv[1].get("stored_at", 0.0))
        return key, None

    def _repair(self, choice: Choice) -> torch.Tensor:
        """Offsets to recompute in a non-exact reused chunk (naive: none)."""
        return torch.zeros(0, dtype=torch.long)

    def _choose(self, seg: Segment, cache: ChunkCache, all_exact: bool) -> Choice:
        exact = cache.contains(seg.exact_key)
        if seg.role == "chunk" and not exact:
            picked = self._pick_variant(seg, cache)
        else:
            picked = (seg.exact_key, 0.0) if exact and (seg.role != "suffix" or all_exact) else None
        if picked is None:
            cache.note_miss()
            return Choice(seg)
        got = cache.get(picked[0])
        if got is None:
            return Choice(seg)
        choice = Choice(seg, got[0], got[1], exact=exact, cfo=picked[1])
        if not exact:
            choice.recompute = self._repair(choice)
        elif seg.role == "suffix":
            choice.recompute = torch.tensor([len(seg.tokens) - 1])
        return choice

    def plan(self, segments: list[Segment], cache: ChunkCache | None) -> Plan:
        if cache is None:
            raise InputError("cache", f"policy {self.name!r} needs a ChunkCache")
        choices: list[Choice] = []
        for seg in segments:
            all_exact = all(c.exact and c.recompute.numel() == 0 for c in choices)
            choices.append(self._choose(seg, cache, all_exact))
        plan = Plan([], torch.zeros(0, dtype=torch.long), _no_hits(), 0, choices=choices)
        selected = []
        for choice in choices:
            seg = choice.segment
            if choice.entry is None:
                selected.append(torch.arange(seg.start, seg.end))
            else:
                tensors = choice.entry.tensors
                old_start = choice.entry.meta["start"]
                plan.reuse.append(Reuse(seg.start, old_start, tensors["keys"], tensors["values"]))
                selected.append(seg.start + choice.recompute)
                cache.record_reuse(choice.entry.key, self._recompute_fraction(choice))
            if seg.role == "chunk":
                if choice.entry is None:
                    plan.chunk_misses += 1
                else:
                    plan.chunk_hits[choice.tier] += 1
        plan.selected = torch.cat(selected).unique(sorted=True)
        plan.refine = self._refine(choices)
        return plan

    def _refine(self, choices: list[Choice]) -> Refine | None:
        return None

    def _recompute_fraction(self, choice: Choice) -> float:
        """Share of a reused segment's tokens recomputed (the cache's reusability statistic)."""
        if choice.segment.role != "chunk":
            return 0.0
        return choice.recompute.numel() / len(choice.segment.tokens)

    def store(self, segments: list[Segment], plan: Plan, kv: PromptKV, result: PrefillResult,
              cache: ChunkCache | None) -> None:
        for choice in plan.choices:
            seg = choice.segment
            rows = result.computed[seg.start:seg.end].cpu()
            if choice.exact or (choice.entry is not None and not rows.any()):
                continue
            keys, values = kv.span(seg.start, seg.end)
            tensors = {"keys": keys, "values": values}
            meta: dict[str, Any] = {"start": seg.start, "prefix": list(seg.prefix), "stored_at": time.time()}
            if seg.role == "chunk":
                self._add_attention(seg, segments, choice, rows, result, tensors, meta)
            cache.put(CacheEntry(seg.exact_key, seg.id, tensors, meta))

    @staticmethod
    def _add_attention(seg: Segment, segments: list[Segment], choice: Choice, rows: torch.Tensor,
                       result: PrefillResult, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Per-token inter/intra masses and per-earlier-chunk mass (Cache-Craft's statistics)."""
        mass = result.segment_mass[seg.start:seg.end].cpu()
        earlier = segments[1:seg.index]
        fresh_inter = mass[:, 1:seg.index].sum(1)
        inter, intra = fresh_inter.clone(), mass[:, seg.index].clone()
        if choice.entry is not None:  # repaired variant: tokens not recomputed keep their old statistics
            inter[~rows] = choice.entry.tensors["inter"].cpu()[~rows]
            intra[~rows] = choice.entry.tensors["intra"].cpu()[~rows]
        by_chunk = mass[rows][:, 1:seg.index].sum(0)
        scale = float(inter.sum()) / float(by_chunk.sum()) if float(by_chunk.sum()) > 0 else 0.0
        meta["mass"] = {}
        for s, m in zip(earlier, by_chunk.tolist(), strict=True):
            meta["mass"][s.id] = meta["mass"].get(s.id, 0.0) + m * scale
        prefix_tokens = sum(len(s.tokens) for s in earlier)
        meta["inter_density"], meta["intra_density"] = densities(inter, intra, prefix_tokens)
        tensors["inter"], tensors["intra"] = inter, intra


@dataclass
class NaiveReuse(ChunkReuse):
    """Reuse with the RoPE fix only; ``recompute_ratio`` > 0 recomputes random tokens per reused chunk."""

    recompute_ratio: float = 0.0
    seed: int = 0
    name = "naive"

    def _repair(self, choice: Choice) -> torch.Tensor:
        n = len(choice.segment.tokens)
        count = math.ceil(self.recompute_ratio * n - 1e-9)
        if count <= 0:
            return torch.zeros(0, dtype=torch.long)
        gen = torch.Generator().manual_seed(self.seed ^ int(choice.segment.id[2:10], 16))
        return torch.randperm(n, generator=gen)[:count].sort().values


@dataclass
class CacheBlend(ChunkReuse):
    """CacheBlend: recompute the ``ratio`` tokens per reused chunk with the highest KV deviation."""

    ratio: float = 0.15
    check_layer: int = 1
    name = "cacheblend"

    def _repair(self, choice: Choice) -> torch.Tensor:
        return torch.arange(len(choice.segment.tokens))  # candidates; the check layer keeps the top ratio

    def _recompute_fraction(self, choice: Choice) -> float:
        return 0.0 if choice.exact or choice.segment.role != "chunk" else self.ratio

    def _refine(self, choices: list[Choice]) -> Refine | None:
        spans = [(c.segment.start, c.segment.end) for c in choices
                 if c.entry is not None and not c.exact and c.segment.role == "chunk"]
        if not spans:
            return None
        ratio, check_layer = self.ratio, self.check_layer

        def refine(layer, idx, k, v, k_old, v_old):
            if layer != check_layer:
                return None
            deviation = (k - k_old).pow(2).sum((0, 2)) + (v - v_old).pow(2).sum((0, 2))
            keep = torch.ones_like(idx, dtype=torch.bool)
            for start, end in spans:
                members = ((idx >= start) & (idx < end)).nonzero().squeeze(1)
                count = math.ceil(ratio * (end - start) - 1e-9)
                keep[members] = False
                keep[members[deviation[members].topk(min(count, members.numel())).indices]] = True
            return keep

        return refine


@dataclass
class CacheCraft(ChunkReuse):
    """Cache-Craft: lowest-CFO variant, recompute its top ``ceil(CFO * n)`` tokens by inter attention."""

    alpha: float = DEFAULT_ALPHA
    name = "cache-craft"

    def _pick_variant(self, seg: Segment, cache: ChunkCache) -> tuple[str, float | None] | None:
        scored = [(cfo(_attention_of(meta), seg.prefix, self.alpha), -meta.get("stored_at", 0.0), key)
                  for key, meta in cache.variants(seg.id)]
        if not scored:
            return None
        best = min(scored)
        return best[2], best[0]

    def _repair(self, choice: Choice) -> torch.Tensor:
        return tokens_to_recompute(choice.entry.tensors["inter"], choice.cfo or 0.0)


def make_policy(name: str, **params: Any) -> Policy:
    """A policy by name (one of :data:`POLICIES`) with optional parameters (e.g. ``alpha``, ``ratio``)."""
    classes = {"full": FullRecompute, "prefix": PrefixCaching, "naive": NaiveReuse, "cacheblend": CacheBlend,
               "cache-craft": CacheCraft}
    if name not in classes:
        raise InputError("policy", f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    try:
        return classes[name](**params)
    except TypeError as exc:
        raise InputError("policy", f"bad parameters for {name!r}: {exc}") from exc
