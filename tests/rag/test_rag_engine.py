"""RagEngine: bad input, policies' token accounting and exactness, disk-tier reuse, quality measures."""

import atexit
import math

import pytest
import torch
from conftest import CHUNKS, QUESTION

from retrieval.rag.chunk_cache import CacheConfig, ChunkCache
from retrieval.rag.engine import RagEngine, open_engine
from retrieval.rag.generator import Generator
from retrieval.rag.policies import POLICIES, make_policy, segments_of
from retrieval.rag.quality import answer_logprob, rouge_l, token_agreement
from sparsekit.errors import InputError

NEW = 6


@pytest.fixture(scope="module")
def reference(generator):
    return RagEngine(generator, "full").generate(QUESTION, CHUNKS, NEW)


@pytest.mark.parametrize(("question", "chunks", "source"), [
    ("", CHUNKS, "question"), ("   ", CHUNKS, "question"), (42, CHUNKS, "question"),
    ("x " * 9000, CHUNKS, "question"), (QUESTION, [], "chunks"), (QUESTION, ["ok", " "], "chunks"),
    (QUESTION, "a chunk", "chunks"), (QUESTION, ["word " * 9000], "chunks"),
])
def test_bad_input_raises_input_error(generator, question, chunks, source) -> None:
    engine = RagEngine(generator, "naive")
    with pytest.raises(InputError) as err:
        engine.generate(question, chunks, NEW)
    assert err.value.source == source


def test_unknown_policy_and_foreign_cache_raise(generator) -> None:
    with pytest.raises(InputError, match="unknown policy"):
        RagEngine(generator, "magic")
    with pytest.raises(InputError, match="cache"):
        RagEngine(generator, "naive", ChunkCache(CacheConfig(), "another-model"))
    assert POLICIES == ("full", "prefix", "naive", "cacheblend", "cache-craft")


def test_full_recompute_accounting(generator, reference) -> None:
    stats = reference.stats
    assert stats.prefill_tokens == stats.prompt_tokens and stats.reused_tokens == 0
    assert stats.chunk_misses == len(CHUNKS) and sum(stats.chunk_hits.values()) == 0
    assert 0 < stats.ttft_s <= stats.total_s and stats.new_tokens == len(reference.token_ids) <= NEW


@pytest.mark.parametrize("policy", ["prefix", "naive", "cacheblend", "cache-craft"])
def test_repeated_request_is_exact_and_nearly_free(generator, reference, policy) -> None:
    engine = RagEngine(generator, policy)
    first = engine.generate(QUESTION, CHUNKS, NEW)
    again = engine.generate(QUESTION, CHUNKS, NEW)
    assert first.token_ids == reference.token_ids == again.token_ids
    assert first.stats.prefill_tokens == first.stats.prompt_tokens
    assert again.stats.chunk_hits["host"] == len(CHUNKS) and again.stats.chunk_misses == 0
    limit = 16 if policy == "prefix" else 1  # prefix: the last partial block; chunk policies: last token
    assert 1 <= again.stats.prefill_tokens <= limit
    assert again.stats.reused_tokens == again.stats.prompt_tokens - again.stats.prefill_tokens


def test_reordered_chunks_accounting_per_policy(generator) -> None:
    reordered = CHUNKS[::-1]
    layout = generator.layout(QUESTION, reordered)
    chunk_tokens = [len(c) for c in layout.chunks]
    counts = {}
    for policy in ("prefix", "naive", "cacheblend", "cache-craft"):
        engine = RagEngine(generator, policy)
        engine.generate(QUESTION, CHUNKS, 1)
        counts[policy] = engine.generate(QUESTION, reordered, 1).stats
    suffix = len(layout.suffix)
    assert counts["prefix"].prefill_tokens >= len(layout) - len(layout.header)  # nothing past the header
    assert counts["prefix"].chunk_misses == len(CHUNKS)
    assert counts["naive"].prefill_tokens == suffix and counts["naive"].chunk_misses == 0
    # CacheBlend: every chunk's prefix changed -> layer 0 for all their tokens, then ceil(15%) per chunk
    layers = generator.num_layers
    blend = sum(n + (layers - 1) * math.ceil(0.15 * n) for n in chunk_tokens) + layers * suffix
    assert counts["cacheblend"].prefill_tokens == math.ceil(blend / layers)
    assert suffix < counts["cache-craft"].prefill_tokens < len(layout)


def test_cache_craft_recomputes_ceil_cfo_tokens(generator) -> None:
    cache = ChunkCache(CacheConfig(), generator.cache_key)
    policy = make_policy("cache-craft", alpha=0.8)
    engine = RagEngine(generator, policy, cache)
    engine.generate(QUESTION, CHUNKS, 1)
    reordered = [CHUNKS[2], CHUNKS[0], CHUNKS[1]]
    plan = policy.plan(segments_of(generator.layout(QUESTION, reordered)), cache)
    chunks = [c for c in plan.choices if c.segment.role == "chunk"]
    assert chunks[0].cfo > 0 and all(0 <= c.cfo <= 1 for c in chunks)
    for choice in chunks:
        assert choice.recompute.numel() == math.ceil(choice.cfo * len(choice.segment.tokens) - 1e-9)
    suffix = len(plan.choices[-1].segment.tokens)
    assert plan.selected.numel() == sum(c.recompute.numel() for c in chunks) + suffix


def test_disk_tier_reuse_and_corrupt_entry_recomputed(generator, reference, tmp_path) -> None:
    config = CacheConfig(host_bytes=0, disk_bytes=1 << 28, directory=tmp_path)
    first = ChunkCache(config, generator.cache_key)
    RagEngine(generator, "cache-craft", first).generate(QUESTION, CHUNKS, NEW)
    first.close()  # a second cache may open the directory only once the first has let go of it
    for blob in sorted((tmp_path / "entries").glob("*.pt"))[:2]:
        blob.write_bytes(blob.read_bytes()[:-64] + b"\0" * 64)
    cache = ChunkCache(config, generator.cache_key)
    result = RagEngine(generator, "cache-craft", cache).generate(QUESTION, CHUNKS, NEW)
    assert result.token_ids == reference.token_ids
    assert cache.stats()["corrupt"] >= 1 and cache.stats()["tiers"]["disk"]["hits"] >= 1
    assert result.stats.prefill_tokens > 1  # the corrupt entries were recomputed


def test_stream_yields_the_text_and_quality_measures(generator, reference) -> None:
    engine = RagEngine(generator, "naive")
    pieces = list(engine.stream(QUESTION, CHUNKS, NEW))
    assert "".join(pieces) == engine.last_result.text == reference.text
    assert token_agreement(reference.token_ids, reference.token_ids) == 1.0
    assert token_agreement([1, 2, 3], [1, 9]) == 1 / 3
    assert rouge_l(reference.text, reference.text) == 1.0 and rouge_l("a b", "c d") == 0.0


def test_answer_logprob_matches_a_plain_forward(generator, reference) -> None:
    engine = RagEngine(generator, "full")
    prefilled = engine.prefill(QUESTION, CHUNKS, NEW)
    answer = reference.token_ids
    ids = torch.tensor([prefilled.layout.ids + answer])
    with torch.no_grad():
        logits = generator.model(ids).logits[0, len(prefilled.layout.ids) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None]).mean()
    assert math.isclose(answer_logprob(generator, prefilled, answer), float(expected), abs_tol=1e-4)


def test_open_engine_builds_a_disk_backed_cache(generator, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Generator, "load", classmethod(lambda cls, *args, **kwargs: generator))
    with pytest.raises(InputError, match="unknown policy"):
        open_engine("magic")
    engine = open_engine("naive", cache_dir=tmp_path, host_bytes=1 << 24, disk_bytes=1 << 28)
    atexit.unregister(engine.cache.close)
    assert engine.cache.config.device_bytes == 1 << 30  # a GPU tier whenever CUDA is there
    assert engine.cache.tiers == (["device"] if torch.cuda.is_available() else []) + ["host", "disk"]
    engine.generate(QUESTION, CHUNKS, 1)
    engine.cache.close()
    assert engine.cache.stats()["tiers"]["disk"]["entries"] == len(CHUNKS) + 2  # + header + suffix
    assert open_engine("full").cache is None


@pytest.mark.parametrize("policy", ["naive", "cacheblend", "cache-craft"])
def test_chunk_policies_count_their_misses_in_the_cache(generator, policy) -> None:
    """A chunk with no cached variant is a miss in ``stats()`` too (it read 0 under every chunk policy)."""
    cache = ChunkCache(CacheConfig(), generator.cache_key)
    RagEngine(generator, policy, cache).generate(QUESTION, CHUNKS, 1)
    assert cache.stats()["misses"] >= len(CHUNKS)
