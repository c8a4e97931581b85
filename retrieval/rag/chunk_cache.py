"""Tiered KV cache of prompt segments (chunk variants, prefix blocks): device -> host RAM -> disk.

The store behind Cache-Craft (Agarwal et al., SIGMOD 2025), which keeps several *variants* of a chunk's
KV (computed under different prefixes, grouped by chunk id) across GPU, CPU and disk, and behind the
vLLM-style prefix cache (Kwon et al., SOSP 2023) and CacheBlend (EuroSys 2025) policies of
:mod:`retrieval.rag.policies`. It stores opaque :class:`CacheEntry` objects: a key, a group (the chunk
a variant belongs to), tensors and JSON metadata; what they mean is the policies' business.

**Tiers** are exclusive: an entry lives in exactly one. ``device`` exists only when CUDA is available
(and ``device_bytes > 0``), ``host`` is CPU RAM, ``disk`` needs ``directory``. A new entry goes to the
highest tier it fits in; a hit in a lower tier promotes the entry to the top. Making room in a tier
demotes its lowest-scored entries one tier down (device -> host -> disk); entries pushed out of the
last tier are evicted. Capacities count tensor bytes.

**Eviction score** (Cache-Craft leaves its exact formula unpublished; this one is measured in
``benchmarks/chunk_cache.py``), with ``t`` the cache clock (one tick per lookup or insert)::

    score = (1 + ln(1 + uses)) * 2 ** (-(t - last_use) / half_life) * reusability
    reusability = 1 - (sum of recompute fractions at its reuses + 0.5) / (reuses + 1)

i.e. frequency (log-damped) times recency (exponential decay, ``CacheConfig.half_life`` ticks) times
how cheaply the entry was reusable (a Cache-Craft variant that needed a high CFO at its reuses is
worth less; the prior is one pseudo-reuse at 0.5). Usage counters live in memory only.

**Disk format** (format ``sparsekit-kv-chunk-cache``, version 2)::

    cache.json            format, version, model_key (model id + dtype + RoPE parameters)
    lock                  flock-ed by the one process using the directory
    entries/<h>.pt        the tensors (torch.save), h = SHA-256 of the entry key
    entries/<h>.json      key, group, meta, nbytes, SHA-256 and size of the .pt file, and the SHA-256
                          of the description itself (``meta`` holds the RoPE start position and the
                          attention statistics reuse decisions read: version 1 left them unchecked)

Every file is written to a temporary name and ``os.replace``-d into place (the .pt before its .json,
so an entry exists only once complete). A read re-checks both SHA-256s; a corrupt or unreadable entry
is logged, deleted and reported as a miss, so the caller recomputes it. A directory written under a
different ``model_key``, format or version raises :class:`~sparsekit.errors.ArtifactError` (nothing is
deleted: point the cache at another directory or remove it), and so does a directory another process
has open (each process keeps its own index of the files: two would delete each other's entries).
:meth:`ChunkCache.close` spills the RAM tiers to disk so a new process finds them; entries still only
in RAM when a process is killed (``kill -9``, a crash) are lost, and a disk hit moves its entry up to
RAM, so the disk tier survives restarts that went through ``close`` (``serve`` calls it when it drains).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsekit.atomic import atomic_path, sweep_directory
from sparsekit.bounds import count, positive
from sparsekit.errors import ArtifactError

FORMAT = "sparsekit-kv-chunk-cache"
VERSION = 2
TIERS = ("device", "host", "disk")
_INFO = "cache.json"
_LOCK = "lock"
_ENTRIES = "entries"
log = logging.getLogger(__name__)


@dataclass
class CacheConfig:
    """Tier capacities in bytes (``device`` is used only with CUDA; ``disk`` needs ``directory``)."""

    device_bytes: int = 0
    host_bytes: int = 1 << 30
    disk_bytes: int = 0
    directory: Path | None = None
    half_life: float = 256.0

    def __post_init__(self) -> None:
        count(self, 0, "device_bytes", "host_bytes", "disk_bytes")
        positive(self, "half_life")
        if self.directory is not None:
            self.directory = Path(self.directory)


@dataclass
class CacheEntry:
    """One cached segment: ``tensors`` (KV and per-token statistics) plus JSON-able ``meta``."""

    key: str
    group: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class _Record:
    key: str
    group: str
    meta: dict[str, Any]
    nbytes: int
    tier: str
    entry: CacheEntry | None = None  # None while on disk
    uses: int = 0
    last_use: int = 0
    reuses: int = 0
    recompute_sum: float = 0.0


def _stem(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path, sweep=False) as tmp:  # scan() sweeps killed writers' leftovers once, at open
        tmp.write_bytes(data)


def _desc_digest(desc: dict[str, Any]) -> str:
    """SHA-256 of an entry description's canonical JSON, without its own digest."""
    body = {k: v for k, v in desc.items() if k != "desc_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _checked(desc: dict[str, Any]) -> dict[str, Any]:
    """``desc`` if its digest matches (ValueError otherwise: a changed RoPE start or statistic)."""
    if desc.get("desc_sha256") != _desc_digest(desc):
        raise ValueError("description checksum mismatch")
    return desc


class _DiskStore:
    """The disk tier's files: one .pt + one .json per entry, checksummed, written atomically."""

    def __init__(self, directory: Path, model_key: str) -> None:
        self.root = directory
        self.entries = directory / _ENTRIES
        self._check_or_init(model_key)
        self._lock_file = self._take_lock()

    def _take_lock(self) -> Any:
        """Hold ``lock`` exclusively for this store's life (released by :meth:`release` or at exit)."""
        handle = open(self.root / _LOCK, "a+")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ArtifactError(self.root, "KV cache directory in use by another process (or another "
                                           "cache in this one): give each its own directory") from None
        return handle

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock
            self._lock_file = None

    def _check_or_init(self, model_key: str) -> None:
        info_path = self.root / _INFO
        if info_path.is_file():
            try:
                info = json.loads(info_path.read_text())
            except json.JSONDecodeError as exc:
                raise ArtifactError(info_path, f"corrupt cache description: {exc}") from exc
            expected = {"format": FORMAT, "version": VERSION, "model_key": model_key}
            for name, want in expected.items():
                if info.get(name) != want:
                    found = info.get(name)
                    raise ArtifactError(self.root, f"KV cache written with {name}={found!r}, this engine "
                                                   f"needs {want!r}: use another directory or delete it")
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise ArtifactError(self.root, f"not empty and has no {_INFO}: not a chunk KV cache directory")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(info_path, json.dumps({"format": FORMAT, "version": VERSION,
                                                 "model_key": model_key}).encode())
        self.entries.mkdir(exist_ok=True)

    def scan(self) -> list[dict[str, Any]]:
        """Descriptions of every complete entry on disk (broken descriptions are dropped)."""
        sweep_directory(self.entries)  # what killed writers left; a live writer's files stay
        found = []
        for path in sorted(self.entries.glob("*.json")):
            try:
                desc = _checked(json.loads(path.read_text()))
                if (self.entries / f"{path.stem}.pt").stat().st_size != desc["file_bytes"]:
                    raise ValueError("size mismatch")
                found.append(desc)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("chunk cache: dropping broken entry %s (%s)", path, exc)
                self.delete(path.stem)
        described = {path.stem for path in self.entries.glob("*.json")}
        for orphan in self.entries.glob("*.pt"):  # a writer killed between an entry's .pt and its .json
            if orphan.stem not in described:
                log.warning("chunk cache: deleting %s (no description: its writer stopped)", orphan)
                orphan.unlink(missing_ok=True)
        return found

    def write(self, entry: CacheEntry) -> None:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in entry.tensors.items()}, buf)
        data = buf.getvalue()
        stem = _stem(entry.key)
        _atomic_write(self.entries / f"{stem}.pt", data)
        desc = {"key": entry.key, "group": entry.group, "meta": entry.meta, "nbytes": entry.nbytes,
                "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        desc["desc_sha256"] = _desc_digest(desc)
        _atomic_write(self.entries / f"{stem}.json", json.dumps(desc).encode())

    def read(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of ``key``, or None (entry deleted) when missing or corrupt."""
        stem = _stem(key)
        try:
            desc = _checked(json.loads((self.entries / f"{stem}.json").read_text()))
            data = (self.entries / f"{stem}.pt").read_bytes()
            if hashlib.sha256(data).hexdigest() != desc["sha256"]:
                raise ValueError("checksum mismatch")
            return torch.load(io.BytesIO(data), weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
            log.warning("chunk cache: corrupt entry %s (%s): dropped, will be recomputed", stem, exc)
            self.delete(stem)
            return None

    def delete(self, stem: str) -> None:
        (self.entries / f"{stem}.json").unlink(missing_ok=True)
        (self.entries / f"{stem}.pt").unlink(missing_ok=True)


class ChunkCache:
    """Tiered, scored KV store; see the module docstring. Thread-safe."""

    def __init__(self, config: CacheConfig, model_key: str) -> None:
        self.config = config
        self.model_key = model_key
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._groups: dict[str, set[str]] = {}
        self._clock = 0
        self._pinned: str | None = None
        self._hits = dict.fromkeys(TIERS, 0)
        self._counts = {"misses": 0, "evictions": 0, "demotions": 0, "promotions": 0, "corrupt": 0}
        self._capacity = self._capacities(config)
        self._disk = _DiskStore(config.directory, model_key) if self._capacity["disk"] > 0 else None
        if self._disk is not None:
            self._load_disk_index()

    @staticmethod
    def _capacities(config: CacheConfig) -> dict[str, int]:
        device = config.device_bytes if torch.cuda.is_available() else 0
        disk = config.disk_bytes if config.directory is not None else 0
        return {"device": device, "host": config.host_bytes, "disk": disk}

    def _load_disk_index(self) -> None:
        for desc in self._disk.scan():
            self._add(_Record(desc["key"], desc["group"], desc["meta"], desc["nbytes"], "disk"))
        self._make_room("disk", 0)

    @property
    def tiers(self) -> list[str]:
        """The tiers in use, fastest first."""
        return [t for t in TIERS if self._capacity[t] > 0]

    def _add(self, rec: _Record) -> None:
        self._records[rec.key] = rec
        self._groups.setdefault(rec.group, set()).add(rec.key)

    def _drop(self, rec: _Record) -> None:
        del self._records[rec.key]
        self._groups[rec.group].discard(rec.key)
        if not self._groups[rec.group]:
            del self._groups[rec.group]
        if rec.tier == "disk":
            self._disk.delete(_stem(rec.key))

    def _used(self, tier: str) -> int:
        return sum(r.nbytes for r in self._records.values() if r.tier == tier)

    def _score(self, rec: _Record) -> float:
        recency = 2.0 ** (-(self._clock - rec.last_use) / self.config.half_life)
        reusability = 1.0 - (rec.recompute_sum + 0.5) / (rec.reuses + 1)
        return (1.0 + math.log1p(rec.uses)) * recency * max(reusability, 1e-3)

    def _next_tier(self, tier: str) -> str | None:
        later = [t for t in TIERS[TIERS.index(tier) + 1:] if self._capacity[t] > 0]
        return later[0] if later else None

    def _make_room(self, tier: str, nbytes: int) -> None:
        candidates = sorted((r for r in self._records.values() if r.tier == tier and r.key != self._pinned),
                            key=self._score)
        used = self._used(tier)
        for victim in candidates:
            if used + nbytes <= self._capacity[tier]:
                return
            used -= victim.nbytes
            self._demote(victim)

    def _demote(self, rec: _Record) -> None:
        below = self._next_tier(rec.tier)
        if below is None or rec.nbytes > self._capacity[below]:
            self._drop(rec)
            self._counts["evictions"] += 1
            return
        entry = rec.entry if rec.entry is not None else self._materialise(rec)
        if entry is None:
            return
        self._make_room(below, rec.nbytes)
        self._place(rec, entry, below)
        self._counts["demotions"] += 1

    def _place(self, rec: _Record, entry: CacheEntry, tier: str) -> None:
        """Move ``rec`` (whose tensors are ``entry``) into ``tier``; room must already be made."""
        if rec.tier == "disk" and tier != "disk":
            self._disk.delete(_stem(rec.key))
        if tier == "disk":
            self._disk.write(entry)
            rec.entry = None
        else:
            target = "cuda" if tier == "device" else "cpu"
            tensors = {k: v.to(target) for k, v in entry.tensors.items()}
            rec.entry = CacheEntry(entry.key, entry.group, tensors, entry.meta)
        rec.tier = tier

    def _materialise(self, rec: _Record) -> CacheEntry | None:
        """The entry's tensors (read from disk when needed); a corrupt disk entry is dropped -> None."""
        if rec.entry is not None:
            return rec.entry
        tensors = self._disk.read(rec.key)
        if tensors is None:
            self._counts["corrupt"] += 1
            self._drop(rec)
            return None
        return CacheEntry(rec.key, rec.group, tensors, rec.meta)

    def _tier_for(self, nbytes: int) -> str | None:
        return next((t for t in self.tiers if nbytes <= self._capacity[t]), None)

    def put(self, entry: CacheEntry) -> str | None:
        """Insert (or replace) ``entry``; returns the tier it landed in (None: too big for every tier)."""
        with self._lock:
            self._clock += 1
            if entry.key in self._records:
                self._drop(self._records[entry.key])
            tier = self._tier_for(entry.nbytes)
            if tier is None:
                return None
            self._make_room(tier, entry.nbytes)
            rec = _Record(entry.key, entry.group, dict(entry.meta), entry.nbytes, tier, last_use=self._clock)
            self._place(rec, entry, tier)
            self._add(rec)
            return tier

    def get(self, key: str) -> tuple[CacheEntry, str] | None:
        """The entry and the tier it was served from (then promoted to the top tier); None on a miss."""
        with self._lock:
            self._clock += 1
            rec = self._records.get(key)
            entry = self._materialise(rec) if rec is not None else None
            if rec is None or entry is None:
                self._counts["misses"] += 1
                return None
            served = rec.tier
            self._hits[served] += 1
            rec.uses += 1
            rec.last_use = self._clock
            self._promote(rec, entry)
            return entry, served

    def _promote(self, rec: _Record, entry: CacheEntry) -> None:
        top = self._tier_for(rec.nbytes)
        if top is None or TIERS.index(top) >= TIERS.index(rec.tier):
            return
        self._pinned = rec.key  # demotions below must not evict the entry being promoted
        try:
            self._make_room(top, rec.nbytes)
            self._place(rec, entry, top)
        finally:
            self._pinned = None
        self._counts["promotions"] += 1

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._records

    def note_miss(self) -> None:
        """Count a lookup that found nothing without calling :meth:`get` (a chunk with no variant):
        ``stats()["misses"]`` then covers every failed lookup. The clock does not tick, as it did not
        before misses were counted here, so eviction order is unchanged."""
        with self._lock:
            self._counts["misses"] += 1

    def variants(self, group: str) -> list[tuple[str, dict[str, Any]]]:
        """``(key, meta)`` of every entry of ``group`` (no tensors are read)."""
        with self._lock:
            return [(k, self._records[k].meta) for k in sorted(self._groups.get(group, ()))]

    def record_reuse(self, key: str, recompute_fraction: float) -> None:
        """Note that ``key`` was reused with this fraction of its tokens recomputed (reusability)."""
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                rec.reuses += 1
                rec.recompute_sum += float(recompute_fraction)

    def stats(self) -> dict[str, Any]:
        """Entries, bytes and hits per tier; misses, evictions, demotions, promotions, corrupt entries."""
        with self._lock:
            tiers = {t: {"entries": sum(r.tier == t for r in self._records.values()), "bytes": self._used(t),
                         "capacity": self._capacity[t], "hits": self._hits[t]} for t in TIERS}
            return {"tiers": tiers, "entries": len(self._records), "groups": len(self._groups),
                    **self._counts}

    def close(self) -> None:
        """Spill the RAM tiers to disk (as far as it has room) so a new process can reuse them, and
        unlock the directory."""
        with self._lock:
            if self._disk is None:
                return
            for rec in sorted((r for r in self._records.values() if r.tier != "disk"), key=self._score,
                              reverse=True):
                if self._used("disk") + rec.nbytes <= self._capacity["disk"]:
                    self._place(rec, rec.entry, "disk")
            self._disk.release()
