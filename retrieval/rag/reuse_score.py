"""Cache-Craft's reuse score: how much of a cached chunk variant to recompute in a new prompt.

Cache-Craft (Agarwal et al., SIGMOD 2025, section 4) records, when a chunk's KV is computed in
context, how much its tokens attended to the chunks before it:

- per token ``i`` (head- and layer-averaged attention mass): ``inter_i`` to tokens of earlier chunks,
  ``intra_i`` to the chunk's own tokens (causally, offsets ``<= i``);
- length-normalised densities ``inter = sum(inter_i) / (n * P)`` (``P`` earlier-chunk tokens) and
  ``intra = sum(intra_i) / sum(i + 1)``; chunk-context impact ``CCI = sigmoid(inter / intra)``;
- ``mass[c]``: the inter mass that went to each earlier chunk ``c``.

At reuse under a new prefix: ``beta`` = share of the old inter mass that went to chunks still in the
new prefix, ``gamma`` = normalised Kendall-tau distance between the orders of those shared chunks
(old vs new), and the cache-fix overhead ``CFO = alpha * CCI * (1 - beta * (1 - gamma))`` clamped
to [0, 1]. The top ``ceil(CFO * n)`` tokens by ``inter_i`` are recomputed (ties: earlier tokens first,
since they have the least in-chunk context).

One change to the published ``beta``: it is multiplied by the share of the new prefix's chunks that
were in the old prefix. As published, a chunk computed after ``[A]`` and reused after ``[A, B]`` gets
``beta = 1`` and CFO 0, although its KV never attended to ``B`` (on SciFact, related questions insert
chunks this way all the time). Edge cases, chosen here: an empty new prefix gives ``beta = 1`` when
the old one was empty too (same context: CFO 0) and ``0`` otherwise; a variant computed with no
earlier chunk reused after some has ``beta = 0``; ``gamma = 0`` with fewer than two shared chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkAttention:
    """Attention statistics of one chunk variant (the JSON part lives in cache entry metadata)."""

    inter_density: float
    intra_density: float
    mass: dict[str, float]        # earlier chunk id -> inter attention mass
    prefix: tuple[str, ...]       # the earlier chunk ids, in prompt order, when it was computed


def densities(inter: torch.Tensor, intra: torch.Tensor, prefix_tokens: int) -> tuple[float, float]:
    """Length-normalised inter and intra densities of per-token masses (see the module docstring)."""
    n = inter.numel()
    inter_density = float(inter.sum()) / (n * prefix_tokens) if prefix_tokens > 0 and n > 0 else 0.0
    intra_density = float(intra.sum()) / (n * (n + 1) / 2) if n > 0 else 0.0
    return inter_density, intra_density


def cci(stats: ChunkAttention) -> float:
    """Chunk-context impact ``sigmoid(inter / intra)``."""
    if stats.intra_density <= 0:
        return 1.0 if stats.inter_density > 0 else 0.5
    return 1.0 / (1.0 + math.exp(-stats.inter_density / stats.intra_density))


def prefix_overlap(stats: ChunkAttention, new_prefix: Sequence[str]) -> float:
    """``beta``: share of the old inter mass going to chunks still in ``new_prefix``, times the share of
    ``new_prefix``'s chunks the variant was computed with (chunks inserted before it were never seen)."""
    if not new_prefix:
        return 1.0 if not stats.prefix else 0.0
    total = sum(stats.mass.values())
    if total <= 0:
        return 0.0
    present = set(new_prefix)
    kept = sum(m for c, m in stats.mass.items() if c in present) / total
    return kept * len(present & set(stats.prefix)) / len(present)


def kendall_tau_distance(old_order: Sequence[str], new_order: Sequence[str]) -> float:
    """``gamma``: fraction of discordant pairs among the chunks in both orders (0 with < 2 shared)."""
    new_rank = {c: i for i, c in enumerate(new_order)}
    shared = [new_rank[c] for c in dict.fromkeys(old_order) if c in new_rank]
    m = len(shared)
    if m < 2:
        return 0.0
    discordant = sum(shared[i] > shared[j] for i in range(m) for j in range(i + 1, m))
    return discordant / (m * (m - 1) / 2)


def cfo(stats: ChunkAttention, new_prefix: Sequence[str], alpha: float) -> float:
    """Cache-fix overhead: the fraction of the chunk's tokens to recompute, in [0, 1]."""
    beta = prefix_overlap(stats, new_prefix)
    gamma = kendall_tau_distance(stats.prefix, new_prefix)
    return min(1.0, max(0.0, alpha * cci(stats) * (1.0 - beta * (1.0 - gamma))))


def tokens_to_recompute(inter: torch.Tensor, fraction: float) -> torch.Tensor:
    """Offsets of the top ``ceil(fraction * n)`` tokens by inter attention (sorted ascending)."""
    count = min(inter.numel(), math.ceil(fraction * inter.numel() - 1e-9))
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(-inter.float().cpu(), stable=True)
    return order[:count].sort().values
