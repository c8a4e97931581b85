"""``benchmarks/chunk_cache.py``: its acceptance rule ("above X on quality" needs the paired interval) and
its question pools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.chunk_cache import COMPARED, _acceptance

ROOT = Path(__file__).resolve().parents[2]


def _stored(lows: dict[str, float]) -> dict:
    policies = {"prefix": {"prefill_tokens_sum": 1000},
                "cache-craft": {"prefill_tokens_sum": 400, "rouge_l": 0.95}}
    differences = {name: {"mean": 0.02, "ci95": [low, 0.05]} for name, low in lows.items()}
    return {"policies": policies, "rouge_l_differences": differences}


def test_a_positive_mean_whose_interval_holds_zero_is_not_a_pass() -> None:
    stored = _stored({"naive": 0.01, "cacheblend@cc": -0.01, "random@cc": 0.0, "cacheblend": 0.001})
    entries = _acceptance(stored["policies"], stored["rouge_l_differences"])
    assert [e["pass"] for e in entries] == [True, True, True, False, False, True]
    for e, (name, recompute) in zip(entries[2:], COMPARED.items(), strict=True):
        assert name in e["criterion"] and recompute in e["criterion"]
        assert "mean difference 0.02" in e["criterion"]


def test_rescore_rewrites_only_the_acceptance_of_a_results_file(tmp_path: Path) -> None:
    path = tmp_path / "chunk_cache.json"
    stored = _stored(dict.fromkeys(COMPARED, -0.02))
    path.write_text(json.dumps({"benchmark": "chunk_cache", "metrics": stored, "acceptance": []}))
    script = ROOT / "benchmarks" / "chunk_cache.py"
    subprocess.run([sys.executable, str(script), "--rescore", "--out", str(path)], check=True,
                   capture_output=True, cwd=ROOT)
    result = json.loads(path.read_text())
    assert result["metrics"] == stored
    assert [e["pass"] for e in result["acceptance"]] == [True, True, False, False, False, False]


def test_the_chunked_corpus_is_reused_only_when_built_from_the_same_inputs(tmp_path: Path) -> None:
    from benchmarks.chunk_cache import CHUNK_TOKENS, _reusable
    from sparsekit.artifacts import fingerprint, write_artifact

    class Tokenizer:
        def __len__(self) -> int:
            return 49152

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "one"}\n')
    out = tmp_path / "scifact-rag"
    assert not _reusable(out, corpus, Tokenizer())  # nothing there
    params = {"max_tokens": CHUNK_TOKENS, "kind": "bm25", "tokenizer": "Tokenizer", "vocab_size": 49152}
    with write_artifact(out, "rag-corpus", 1, params=params, source=fingerprint([corpus])) as w:
        w.path("chunks.jsonl").write_text("{}")
    assert _reusable(out, corpus, Tokenizer())
    corpus.write_text('{"_id": "d1", "text": "edited"}\n')
    assert not _reusable(out, corpus, Tokenizer())  # another corpus at the same path


def test_popular_pools_are_disjoint_and_follow_the_ranking() -> None:
    from benchmarks.chunk_cache import popular_pools

    retrieved = {f"q{i}": ["shared", f"own{i}"] + (["hot"] if i < 4 else []) for i in range(10)}
    evaluation, dev, warm = popular_pools(retrieved, 3, 2, 4)
    assert evaluation == ["q0", "q1", "q2"] and dev == ["q3", "q4"] and warm == ["q5", "q6", "q7", "q8"]
    assert popular_pools(retrieved, 3, 2)[2] == []


def test_question_pools_fill_evaluation_dev_then_warmup_from_disjoint_groups() -> None:
    from benchmarks.chunk_cache import question_pools

    train = {f"q{i}": {f"d{i // 2}": 1} for i in range(20)}  # ten groups of two queries citing one doc
    evaluation, dev, warm = question_pools(train, 0, 4, 2, 6)
    assert (len(evaluation), len(dev), len(warm)) == (4, 2, 6)
    assert not (set(evaluation) & set(dev) or set(evaluation) & set(warm) or set(dev) & set(warm))
    assert question_pools(train, 0, 4, 2)[:2] == (evaluation, dev)  # the warm-up takes from what is left


def test_a_policy_runs_cache_stats_count_only_the_measured_replay_not_the_warmup(monkeypatch) -> None:
    """The warm-up is uncounted but for its prefill tokens: the cache's hit/miss/eviction counters in a
    policy's summary cover the same requests as its chunk_hits / chunk_misses."""
    from types import SimpleNamespace

    import benchmarks.chunk_cache as cc

    class Cache:
        def __init__(self, config, key) -> None:
            self.hits, self.misses, self.evictions, self.entries = 0, 0, 0, 0

        def stats(self) -> dict:
            return {"tiers": {"host": {"entries": self.entries, "bytes": 10 * self.entries, "capacity": 100,
                                       "hits": self.hits}},
                    "entries": self.entries, "groups": self.entries, "misses": self.misses,
                    "evictions": self.evictions, "demotions": 0, "promotions": 0, "corrupt": 0}

    class Engine:
        def __init__(self, generator, policy, cache: Cache) -> None:
            self.cache = cache

        def prefill(self, question: str, chunks: list[str], new_tokens: int):
            self.cache.hits += 2
            self.cache.misses += 3
            self.cache.evictions += 1
            self.cache.entries += 3
            stats = SimpleNamespace(prefill_tokens=7, prompt_tokens=10, ttft_s=0.0,
                                    chunk_hits={"host": 2}, chunk_misses=3)
            return SimpleNamespace(stats=stats)

        def decode(self, pre, new_tokens: int):
            return iter([1])

    monkeypatch.setattr(cc, "ChunkCache", Cache)
    monkeypatch.setattr(cc, "RagEngine", Engine)
    monkeypatch.setattr(cc, "answer_logprob", lambda *a: 0.0)
    monkeypatch.setattr(cc, "moved_chunk_fraction", lambda pre: None)
    generator = SimpleNamespace(cache_key="m", decode=lambda tokens: "a")
    requests = {q: cc.Request(q, ["c"]) for q in ("w1", "w2", "w3", "q1", "q2")}
    refs = {q: cc.Reference([1], "a", 0.0, 10, 0.0) for q in ("q1", "q2")}
    run, stats = cc.run_policy(generator, None, ["q1", "q2"], requests, refs, None, "p", False,
                               ["w1", "w2", "w3"])
    summary = cc.summarise(run, 0.0)
    assert summary["chunk_hits"] == {"host": 4} and summary["chunk_misses"] == 6
    assert stats["tiers"]["host"]["hits"] == 4 and stats["misses"] == 6 and stats["evictions"] == 2
    assert stats["entries"] == 15 and stats["tiers"]["host"]["bytes"] == 150  # the state at the end
    assert summary["warmup_prefill_tokens_sum"] == 21
