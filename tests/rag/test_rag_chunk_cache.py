"""ChunkCache tiers: capacity, demotion, eviction score, disk persistence, corruption, foreign dirs."""

import json

import pytest
import torch

from retrieval.rag.chunk_cache import CacheConfig, CacheEntry, ChunkCache
from sparsekit.errors import ArtifactError, InputError

KEY = "model-x|float32|rope=default:100000"
SIZE = 4 * 256  # bytes of one test entry


def _entry(name: str, group: str = "g", fill: float = 0.0) -> CacheEntry:
    return CacheEntry(name, group, {"keys": torch.full((256,), float(fill))}, {"start": 3, "prefix": ["p"]})


def test_capacity_demotes_host_to_disk_and_evicts_from_disk(tmp_path) -> None:
    cache = ChunkCache(CacheConfig(host_bytes=2 * SIZE, disk_bytes=2 * SIZE, directory=tmp_path), KEY)
    for i in range(5):
        assert cache.put(_entry(f"e{i}", fill=i)) == "host"
    stats = cache.stats()
    assert stats["tiers"]["host"]["entries"] == 2 and stats["tiers"]["disk"]["entries"] == 2
    assert stats["demotions"] == 3 and stats["evictions"] == 1
    assert stats["tiers"]["host"]["bytes"] <= 2 * SIZE
    assert not cache.contains("e0")  # oldest: demoted first, then pushed out of the disk tier
    entry, tier = cache.get("e2")
    assert tier == "disk" and entry.tensors["keys"][0] == 2 and entry.meta["prefix"] == ["p"]
    assert cache.stats()["promotions"] == 1 and cache.stats()["tiers"]["disk"]["hits"] == 1


def test_frequently_used_entries_survive_eviction() -> None:
    cache = ChunkCache(CacheConfig(host_bytes=3 * SIZE), KEY)
    cache.put(_entry("hot"))
    for _ in range(5):
        cache.get("hot")
    for i in range(4):
        cache.put(_entry(f"cold{i}"))
    assert cache.contains("hot") and cache.stats()["evictions"] == 2


def test_entries_that_needed_large_repairs_are_evicted_first() -> None:
    cache = ChunkCache(CacheConfig(host_bytes=2 * SIZE), KEY)
    cache.put(_entry("costly"))
    cache.put(_entry("cheap"))
    for name, fraction in (("costly", 0.9), ("cheap", 0.0)):
        cache.get(name)
        cache.record_reuse(name, fraction)
    cache.put(_entry("new"))
    assert cache.contains("cheap") and not cache.contains("costly")


def test_variants_are_grouped_and_too_big_entries_are_refused() -> None:
    cache = ChunkCache(CacheConfig(host_bytes=2 * SIZE), KEY)
    cache.put(_entry("c1@a", group="c1"))
    cache.put(_entry("c1@b", group="c1"))
    assert [k for k, _ in cache.variants("c1")] == ["c1@a", "c1@b"]
    big = CacheEntry("big", "g", {"keys": torch.zeros(4096)})
    assert cache.put(big) is None and not cache.contains("big")
    assert cache.get("nope") is None and cache.stats()["misses"] == 1


def test_disk_tier_survives_a_new_instance(tmp_path) -> None:
    config = CacheConfig(host_bytes=10 * SIZE, disk_bytes=10 * SIZE, directory=tmp_path)
    first = ChunkCache(config, KEY)
    first.put(_entry("a", fill=1.5))
    first.put(_entry("b", group="h"))
    first.close()  # spills the host tier to disk
    second = ChunkCache(config, KEY)
    assert second.stats()["tiers"]["disk"]["entries"] == 2
    entry, tier = second.get("a")
    assert tier == "disk" and float(entry.tensors["keys"][0]) == 1.5 and entry.meta["start"] == 3
    assert [k for k, _ in second.variants("h")] == ["b"]


def test_corrupt_disk_entry_is_detected_and_dropped(tmp_path) -> None:
    config = CacheConfig(host_bytes=0, disk_bytes=10 * SIZE, directory=tmp_path)
    cache = ChunkCache(config, KEY)
    assert cache.put(_entry("a")) == "disk"
    blob = next((tmp_path / "entries").glob("*.pt"))
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert cache.get("a") is None
    assert cache.stats()["corrupt"] == 1 and not cache.contains("a")
    assert not list((tmp_path / "entries").glob("*"))


def _two_entries_on_disk(tmp_path) -> CacheConfig:
    """Entries "a" and "b" written to a disk-only cache in ``tmp_path``, closed; its config."""
    config = CacheConfig(host_bytes=0, disk_bytes=10 * SIZE, directory=tmp_path)
    cache = ChunkCache(config, KEY)
    cache.put(_entry("a"))
    cache.put(_entry("b"))
    cache.close()
    return config


def test_an_entry_whose_writer_died_before_its_description_is_deleted_at_open(tmp_path) -> None:
    """A kill between an entry's .pt and its .json leaves a .pt no scan counts: the next open deletes
    it, so the directory cannot grow past ``disk_bytes``."""
    config = _two_entries_on_disk(tmp_path)
    described = next((tmp_path / "entries").glob("*.json"))
    described.unlink()  # as if the writer had stopped before this .json
    reopened = ChunkCache(config, KEY)
    assert reopened.stats()["tiers"]["disk"]["entries"] == 1
    assert len(list((tmp_path / "entries").glob("*.pt"))) == 1
    assert not (tmp_path / "entries" / f"{described.stem}.pt").exists()


def test_directory_of_another_model_raises(tmp_path) -> None:
    ChunkCache(CacheConfig(disk_bytes=SIZE, directory=tmp_path), KEY).put(_entry("a"))
    with pytest.raises(ArtifactError, match="model_key"):
        ChunkCache(CacheConfig(disk_bytes=SIZE, directory=tmp_path), "other-model|float16|rope=default:1e4")
    info = json.loads((tmp_path / "cache.json").read_text())
    (tmp_path / "cache.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ArtifactError, match="version"):
        ChunkCache(CacheConfig(disk_bytes=SIZE, directory=tmp_path), KEY)
    (tmp_path / "cache.json").unlink()
    with pytest.raises(ArtifactError, match="not a chunk KV cache"):
        ChunkCache(CacheConfig(disk_bytes=SIZE, directory=tmp_path), KEY)


def test_bad_config_raises() -> None:
    with pytest.raises(InputError, match="host_bytes"):
        CacheConfig(host_bytes=-1)
    with pytest.raises(InputError, match="disk_bytes"):
        CacheConfig(disk_bytes=1.5)


def test_the_model_identity_covers_the_weights(tmp_path) -> None:
    """Two GGUF files of one name and size that differ past the first MiB (in the weights) get different
    identities, so one's cached KV is never reused by the other."""
    from retrieval.rag.generator import gguf_identity

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data = bytearray(3 << 20)
    (tmp_path / "a" / "m.gguf").write_bytes(bytes(data))
    data[2 << 20] = 1
    (tmp_path / "b" / "m.gguf").write_bytes(bytes(data))
    first, second = gguf_identity(tmp_path / "a" / "m.gguf"), gguf_identity(tmp_path / "b" / "m.gguf")
    assert first.split(":")[:2] == second.split(":")[:2] == ["m.gguf", str(3 << 20)] and first != second


def test_a_directory_in_use_is_refused_until_closed(tmp_path) -> None:
    """Two caches (two processes, or two in one) on one directory would delete each other's entries."""
    config = CacheConfig(host_bytes=0, disk_bytes=10 * SIZE, directory=tmp_path)
    first = ChunkCache(config, KEY)
    first.put(_entry("a"))
    with pytest.raises(ArtifactError, match="in use by another process"):
        ChunkCache(config, KEY)
    first.close()
    assert ChunkCache(config, KEY).contains("a")


def test_a_changed_entry_description_is_detected(tmp_path) -> None:
    """The .json holds the RoPE start and reuse statistics: an edited value is corrupt, not served."""
    config = _two_entries_on_disk(tmp_path)
    described = sorted((tmp_path / "entries").glob("*.json"))
    for path in described:
        desc = json.loads(path.read_text())
        if desc["key"] == "a":
            path.write_text(json.dumps({**desc, "meta": {**desc["meta"], "start": 35}}))
    reopened = ChunkCache(config, KEY)  # dropped at open
    assert not reopened.contains("a") and reopened.contains("b")
    entry, _ = reopened.get("b")
    assert entry.meta["start"] == 3
