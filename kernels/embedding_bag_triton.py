"""Triton kernels: fused hashed / compositional (QR) embedding lookup with optional sum-pooling.

The CUDA path of :mod:`kernels.embedding_bag` for the hashing trick (Weinberger et al., ICML 2009) and
the quotient-remainder / compositional embeddings (Shi et al., KDD 2020); the semantics are those of
:mod:`kernels.embedding_bag_reference`. One kernel launch does what takes several torch ops (hash or
mixed-radix digits, one gather per partition, the element-wise combine, the sum over fields) and never
materialises the per-partition ``[B, F, dim]`` intermediates.

Layout: the output has ``groups`` rows of ``dim`` (``B * F`` rows unpooled, ``B`` rows pooled), and group
``g`` sums ``items`` consecutive ids (``1`` unpooled, ``F`` pooled). Each program covers ``GROUPS``
groups x ``BLOCK_D`` (the next power of two >= ``dim``) columns and accumulates in float32. Index
arithmetic is int64. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from kernels.embedding_bag_reference import HASH_PRIME, CompositionalLookup, HashLookup

TILE_ELEMENTS = 4096  # GROUPS * BLOCK_D: output elements one program covers


@triton.jit
def _hashed_bag_kernel(
    weight_ptr, ids_ptr, out_ptr, groups, items, dim, num_rows, hash_a, hash_b,
    PRIME: tl.constexpr, GROUPS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
    valid = group < groups
    cols = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (cols < dim)[None, :]
    acc = tl.zeros((GROUPS, BLOCK_D), dtype=tl.float32)
    for item in range(items):
        key = tl.load(ids_ptr + group * items + item, mask=valid, other=0).to(tl.int64)
        row = ((key % PRIME) * hash_a + hash_b) % PRIME % num_rows
        acc += tl.load(weight_ptr + row[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + group[:, None] * dim + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _compositional_bag_kernel(
    weight_ptr, radix_ptr, offset_ptr, ids_ptr, out_ptr, groups, items, dim,
    PARTS: tl.constexpr, MULT: tl.constexpr, GROUPS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
    valid = group < groups
    cols = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (cols < dim)[None, :]
    acc = tl.zeros((GROUPS, BLOCK_D), dtype=tl.float32)
    for item in range(items):
        rest = tl.load(ids_ptr + group * items + item, mask=valid, other=0).to(tl.int64)
        if MULT:
            vec = tl.full((GROUPS, BLOCK_D), 1.0, dtype=tl.float32)
        else:
            vec = tl.zeros((GROUPS, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(PARTS):
            radix = tl.load(radix_ptr + j)
            row = rest % radix + tl.load(offset_ptr + j)
            rest = rest // radix
            part = tl.load(weight_ptr + row[:, None] * dim + cols[None, :], mask=mask, other=0.0)
            if MULT:
                vec *= part.to(tl.float32)
            else:
                vec += part.to(tl.float32)
        acc += vec
    tl.store(out_ptr + group[:, None] * dim + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def launch_shape(dim: int) -> tuple[int, int]:
    """``(GROUPS, BLOCK_D)``: ``BLOCK_D`` the next power of two >= ``dim``; ``GROUPS`` fills the tile."""
    block = triton.next_power_of_2(max(dim, 1))
    return max(1, TILE_ELEMENTS // block), block


def _output(weight: torch.Tensor, ids: torch.Tensor, pool: bool) -> tuple[torch.Tensor, int, int]:
    batch, fields = ids.shape
    shape = (batch, weight.shape[1]) if pool else (batch, fields, weight.shape[1])
    out = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    return out, (batch if pool else batch * fields), (fields if pool else 1)


def _device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def hashed_bag_triton(weight: torch.Tensor, ids: torch.Tensor, lookup: HashLookup,
                      pool: bool = False) -> torch.Tensor:
    """Fused hashed lookup; ``weight`` 2-D contiguous, ``ids`` ``[B, F]`` int32/int64 on its device."""
    ids = ids.contiguous()
    out, groups, items = _output(weight, ids, pool)
    if groups == 0 or weight.shape[1] == 0:
        return out.zero_()
    rows, block = launch_shape(weight.shape[1])
    with _device(weight):
        _hashed_bag_kernel[(triton.cdiv(groups, rows),)](
            weight, ids, out, groups, items, weight.shape[1], weight.shape[0], lookup.a, lookup.b,
            PRIME=HASH_PRIME, GROUPS=rows, BLOCK_D=block,
        )
    return out


def compositional_bag_triton(weight: torch.Tensor, ids: torch.Tensor, lookup: CompositionalLookup,
                             pool: bool = False) -> torch.Tensor:
    """Fused quotient-remainder lookup; ``weight`` stacks the partitions (``lookup.rows`` rows)."""
    ids = ids.contiguous()
    out, groups, items = _output(weight, ids, pool)
    if groups == 0 or weight.shape[1] == 0:
        return out.zero_()
    radices = torch.tensor(lookup.radices, dtype=torch.int64, device=weight.device)
    offsets = torch.tensor(lookup.offsets, dtype=torch.int64, device=weight.device)
    rows, block = launch_shape(weight.shape[1])
    with _device(weight):
        _compositional_bag_kernel[(triton.cdiv(groups, rows),)](
            weight, radices, offsets, ids, out, groups, items, weight.shape[1],
            PARTS=len(lookup.radices), MULT=lookup.combine == "mult", GROUPS=rows, BLOCK_D=block,
        )
    return out
