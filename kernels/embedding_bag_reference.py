"""Plain torch reference for the hashed and compositional (QR) embedding lookups, with optional sum-pooling.

Two inter-feature compressed lookups of the VLDB 2024 embedding-compression benchmark read a small
shared table instead of one row per feature:

- **hashing trick** (Weinberger et al., ICML 2009): feature ``x`` reads row ``h(x) mod m`` with the
  universal hash ``h(x) = (a * (x mod p) + b) mod p``, ``p = 2^31 - 1`` (Carter & Wegman), so two seeded
  integers describe the whole mapping;
- **compositional / quotient-remainder** (Shi et al., KDD 2020): ``x`` is written in mixed radix
  ``(r_0, r_1, ...)`` -- digit ``j`` is ``(x // (r_0 ... r_{j-1})) mod r_j`` -- and the vector combines
  row ``digit_j`` of partition ``j`` (element-wise product, or sum). Two partitions are the paper's
  quotient-remainder trick; more are its "complementary partitions". All partitions live in one
  ``weight`` matrix, partition ``j`` at rows ``offset_j = r_0 + ... + r_{j-1}``.

Given ids ``[B, F]`` both return ``[B, F, dim]``, or ``[B, dim]`` summed over the ``F`` columns
(an embedding bag) when ``pool``. This is the ground truth for the fused Triton kernel
(:mod:`kernels.embedding_bag_triton`) and the path every CPU lookup takes. Ids are trusted to be
non-negative and in range (the embedding tables validate them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.row_lookup import lookup_rows

HASH_PRIME = 2_147_483_647  # 2^31 - 1: (a * (x mod p) + b) stays below 2^62, exact in int64
COMBINES = ("mult", "add")


@dataclass(frozen=True)
class HashLookup:
    """Feature ``x`` reads row ``((a * (x mod p) + b) mod p) mod rows``; ``1 <= a < p``, ``0 <= b < p``."""

    a: int
    b: int


@dataclass(frozen=True)
class CompositionalLookup:
    """Mixed-radix digits of ``x`` select one row per partition; vectors combined by ``combine``."""

    radices: tuple[int, ...]
    combine: str = "mult"

    @property
    def offsets(self) -> tuple[int, ...]:
        """First row of each partition inside the stacked weight matrix."""
        starts, total = [], 0
        for radix in self.radices:
            starts.append(total)
            total += radix
        return tuple(starts)

    @property
    def rows(self) -> int:
        return sum(self.radices)


def universal_hash(keys: torch.Tensor, a: int | torch.Tensor, b: int | torch.Tensor,
                   buckets: int) -> torch.Tensor:
    """``((a * (keys mod p) + b) mod p) mod buckets`` for non-negative int64 ``keys`` (``a``, ``b`` may be
    int64 tensors broadcasting against ``keys``: several hash functions at once)."""
    return ((keys % HASH_PRIME) * a + b) % HASH_PRIME % buckets


def mixed_radix_rows(ids: torch.Tensor, lookup: CompositionalLookup) -> list[torch.Tensor]:
    """Row (in the stacked weight) that each partition contributes for ``ids``."""
    rows, rest = [], ids.long()
    for radix, offset in zip(lookup.radices, lookup.offsets, strict=True):
        rows.append(rest % radix + offset)
        rest = rest // radix
    return rows


def hashed_bag_reference(weight: torch.Tensor, ids: torch.Tensor, lookup: HashLookup,
                         pool: bool = False) -> torch.Tensor:
    """``weight[h(ids)]``: ``[B, F, dim]``, or ``[B, dim]`` summed over fields when ``pool``."""
    out = lookup_rows(weight, universal_hash(ids.long(), lookup.a, lookup.b, weight.shape[0]))
    return out.sum(dim=1) if pool else out


def compositional_bag_reference(weight: torch.Tensor, ids: torch.Tensor, lookup: CompositionalLookup,
                                pool: bool = False) -> torch.Tensor:
    """Combined partition rows of ``ids``: ``[B, F, dim]``, or ``[B, dim]`` summed when ``pool``."""
    rows = mixed_radix_rows(ids, lookup)
    out = lookup_rows(weight, rows[0])
    for row in rows[1:]:
        out = out * lookup_rows(weight, row) if lookup.combine == "mult" else out + lookup_rows(weight, row)
    return out.sum(dim=1) if pool else out
