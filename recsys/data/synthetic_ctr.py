"""Synthetic CTR rows with power-law feature frequencies and a planted logistic ground truth.

Stands in for Criteo/Avazu-scale feature spaces (none is in the shared data) in the embedding
compression benchmark: each field's values follow a truncated Zipf law (frequency of the r-th most
popular value ~ (r + 1)^-a, as in real CTR logs), and a click is drawn from
``sigmoid(bias + sum_f w(x_f) + scale * sum_{f<g} <v(x_f), v(x_g)>)`` (a planted logistic model with
FM-style pairwise terms). The weights ``w`` and vectors ``v`` of a feature are pseudo-random functions
of its id (SplitMix64 hashes), never stored, and rows are generated in chunks: memory is
``O(chunk_rows * fields)`` whatever the number of features, so 20M+ feature spaces cost nothing extra.
Popularity ranks map to ids through a per-field affine bijection, so popular ids are scattered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from recsys.data.ctr import CTRDataset, CTRField, CTRSchema, split_dataset
from sparsekit.bounds import at_least, count, each_count, positive

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class SyntheticCTRConfig:
    """Shape and ground truth of a synthetic CTR set; same config, same rows."""

    field_dims: tuple[int, ...] = (1_000_000, 100_000, 10_000, 1_000, 100, 10)
    num_rows: int = 100_000
    zipf_a: float = 1.1
    weight_std: float = 0.5
    interaction_dim: int = 4
    interaction_scale: float = 0.3
    bias: float = -1.0
    seed: int = 0
    chunk_rows: int = 1 << 16

    def __post_init__(self) -> None:
        each_count(self, 1, "field_dims")
        count(self, 1, "num_rows", "chunk_rows")
        at_least(self, 0, "weight_std")
        count(self, 0, "interaction_dim")
        positive(self, "zipf_a")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def _hash_normal(ids: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A standard normal per (id, seed, stream), by Box-Muller on two hashed uniforms."""
    key = ids.astype(np.uint64) * np.uint64(2)
    salt = _splitmix64(_splitmix64(np.asarray([seed], dtype=np.uint64)) + np.uint64(stream))[0]
    with np.errstate(over="ignore"):
        u1 = (_splitmix64(key ^ salt) >> np.uint64(11)).astype(np.float64) + 1.0
        u2 = (_splitmix64((key + np.uint64(1)) ^ salt) >> np.uint64(11)).astype(np.float64)
    u1, u2 = u1 / 2.0**53, u2 / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _zipf_ranks(rng: np.random.Generator, n: int, a: float, size: int) -> np.ndarray:
    """Ranks in ``[0, n)`` with P(r) ~ (r + 1)^-a: inverse CDF of a power law on ``[1, n + 1)``."""
    u = rng.random(size)
    if math.isclose(a, 1.0):
        x = np.exp(u * math.log(n + 1.0))
    else:
        top = (n + 1.0) ** (1.0 - a)
        x = ((top - 1.0) * u + 1.0) ** (1.0 / (1.0 - a))
    return np.minimum(np.floor(x).astype(np.int64) - 1, n - 1)


def _bijection(n: int, seed: int, field: int) -> tuple[int, int]:
    """``(mult, shift)`` with ``gcd(mult, n) == 1``: ``rank -> (rank * mult + shift) % n`` is a bijection."""
    rng = np.random.default_rng([seed, field, 7])
    mult = int(rng.integers(1, max(n, 2)))
    while math.gcd(mult, n) != 1:
        mult += 1
    return mult, int(rng.integers(0, n))


def planted_logits(config: SyntheticCTRConfig, features: np.ndarray) -> np.ndarray:
    """The ground-truth logit of each row of global ids ``[N, F]``."""
    logit = config.bias + config.weight_std * _hash_normal(features, config.seed, 0).sum(axis=1)
    if config.interaction_dim > 0:
        vecs = np.stack(
            [_hash_normal(features, config.seed, 1 + k) for k in range(config.interaction_dim)], -1
        )
        pair_sum = 0.5 * (vecs.sum(axis=1) ** 2 - (vecs**2).sum(axis=1)).sum(axis=1)
        logit += config.interaction_scale * pair_sum / math.sqrt(config.interaction_dim)
    return logit


def synthetic_chunks(
    config: SyntheticCTRConfig, progress: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features int64 [n, F], labels float32 [n])`` chunks of at most ``chunk_rows`` rows."""
    offsets = np.concatenate([[0], np.cumsum(config.field_dims)[:-1]]).astype(np.int64)
    maps = [_bijection(n, config.seed, f) for f, n in enumerate(config.field_dims)]
    rng = np.random.default_rng([config.seed, 1])
    bar = tqdm(total=config.num_rows, desc="synthetic CTR rows", unit="row", disable=not progress)
    for start in range(0, config.num_rows, config.chunk_rows):
        size = min(config.chunk_rows, config.num_rows - start)
        features = np.empty((size, len(config.field_dims)), dtype=np.int64)
        for f, n in enumerate(config.field_dims):
            mult, shift = maps[f]
            ranks = _zipf_ranks(rng, n, config.zipf_a, size)
            features[:, f] = offsets[f] + (ranks * mult + shift) % n
        clicks = rng.random(size) < 1.0 / (1.0 + np.exp(-planted_logits(config, features)))
        bar.update(size)
        yield features, clicks.astype(np.float32)
    bar.close()


def synthetic_schema(field_dims: Sequence[int]) -> CTRSchema:
    """Fields ``f0, f1, ...`` whose raw values are field-local integer ids."""
    return CTRSchema(tuple(CTRField(f"f{i}", int(n)) for i, n in enumerate(field_dims)))


def make_synthetic_ctr(config: SyntheticCTRConfig, progress: bool = False) -> CTRDataset:
    """All rows of ``config`` split 70/10/20 (seeded) into a :class:`CTRDataset`."""
    chunks = list(synthetic_chunks(config, progress))
    features = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    info = {"zipf_a": config.zipf_a, "planted": "logistic + pairwise", "num_rows": config.num_rows}
    return split_dataset(
        "synthetic", synthetic_schema(config.field_dims), features, labels, config.seed, info=info
    )
