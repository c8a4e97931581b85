"""Dispatcher for hashed and compositional (QR) embedding lookups: fused Triton kernel on CUDA, torch on CPU.

Serves the hashing trick (Weinberger et al., ICML 2009; :class:`embeddings.hashing.HashingTable`) and
quotient-remainder / compositional embeddings (Shi et al., KDD 2020; :class:`embeddings.qr.QRTable`):
``embedding_bag(weight, ids, lookup, pool)`` maps ids ``[B, F]`` to ``[B, F, dim]`` (or ``[B, dim]``,
summed over the ``F`` columns, when ``pool``). See :mod:`kernels.embedding_bag_reference` for the exact
semantics.

When ``weight`` is a CUDA tensor, triton is importable and no gradient is wanted, the forward pass is one
launch of the fused kernel (:mod:`kernels.embedding_bag_triton`). Forced under autograd, its backward is
the vector-Jacobian product of the torch reference (re-gathering the rows involved, then the sort-and-reduce
backward of ``F.embedding``), so the tables train through it too. Everywhere else the torch reference runs
directly (autograd as usual). Ids are trusted to be in range (the tables validate them); shapes and dtypes
are checked here.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels import triton_available
from kernels.embedding_bag_reference import (
    COMBINES,
    HASH_PRIME,
    CompositionalLookup,
    HashLookup,
    compositional_bag_reference,
    hashed_bag_reference,
)
from sparsekit.errors import InputError

Lookup = HashLookup | CompositionalLookup
ID_DTYPES = frozenset({torch.int32, torch.int64})
KERNEL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def _reference(weight: torch.Tensor, ids: torch.Tensor, lookup: Lookup, pool: bool) -> torch.Tensor:
    if isinstance(lookup, HashLookup):
        return hashed_bag_reference(weight, ids, lookup, pool)
    return compositional_bag_reference(weight, ids, lookup, pool)


def _triton(weight: torch.Tensor, ids: torch.Tensor, lookup: Lookup, pool: bool) -> torch.Tensor:
    from kernels.embedding_bag_triton import compositional_bag_triton, hashed_bag_triton

    if isinstance(lookup, HashLookup):
        return hashed_bag_triton(weight, ids, lookup, pool)
    return compositional_bag_triton(weight, ids, lookup, pool)


class _FusedBag(torch.autograd.Function):
    """Triton forward; backward = the reference's vector-Jacobian product w.r.t. ``weight``."""

    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, ids: torch.Tensor, lookup: Lookup, pool: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, ids)
        ctx.lookup, ctx.pool = lookup, pool
        return _triton(weight.contiguous(), ids, lookup, pool)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        weight, ids = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        with torch.enable_grad():
            leaf = weight.detach().requires_grad_()
            (grad_weight,) = torch.autograd.grad(_reference(leaf, ids, ctx.lookup, ctx.pool), leaf, grad)
        return grad_weight, None, None, None


def _check(weight: torch.Tensor, ids: torch.Tensor, lookup: Lookup) -> None:
    if weight.dim() != 2 or weight.shape[0] < 1:
        raise InputError("weight", f"must be a non-empty 2-D tensor, got shape {tuple(weight.shape)}")
    if ids.dim() != 2 or ids.dtype not in ID_DTYPES:
        raise InputError("ids", f"must be a 2-D int32/int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() and int(ids.min()) < 0:  # torch's % wraps them onto a row, Triton's reads out of bounds
        raise InputError("ids", f"feature ids must be >= 0, got {int(ids.min())}")
    if isinstance(lookup, HashLookup):
        if not 1 <= lookup.a < HASH_PRIME or not 0 <= lookup.b < HASH_PRIME:
            raise InputError("lookup", f"hash coefficients out of range: a={lookup.a}, b={lookup.b}")
        return
    if not lookup.radices or min(lookup.radices) < 1:
        raise InputError("lookup", f"radices must be positive, got {lookup.radices}")
    if lookup.combine not in COMBINES:
        raise InputError("lookup", f"combine must be one of {COMBINES}, got {lookup.combine!r}")
    if lookup.rows != weight.shape[0]:
        raise InputError("weight", f"has {weight.shape[0]} rows, the partitions need {lookup.rows}")


def embedding_bag(
    weight: torch.Tensor,
    ids: torch.Tensor,
    lookup: Lookup,
    pool: bool = False,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Hashed or compositional vectors of ``ids [B, F]``: ``[B, F, dim]``, or ``[B, dim]`` when ``pool``.

    ``use_triton``: ``None`` picks the fused kernel for CUDA ``weight`` (float32/16, bfloat16) when triton
    is importable and no gradient is wanted (inference: 2.1-5.8x the torch lookup on an H200); a training
    step takes 11-19% less time through torch, whose backward reuses its forward
    (``benchmarks/gpu_kernels.py``).
    ``True`` forces the kernel (CPU tensors need ``TRITON_INTERPRET=1``); ``False`` forces torch.
    """
    _check(weight, ids, lookup)
    if use_triton is None:
        training = torch.is_grad_enabled() and weight.requires_grad
        use_triton = weight.is_cuda and weight.dtype in KERNEL_DTYPES and triton_available() and not training
    ids = ids.to(weight.device)
    if use_triton:
        if weight.dtype not in KERNEL_DTYPES:  # the kernel adds up in float32: float64 would lose precision
            raise InputError("weight", f"the fused kernel takes float32 / float16 / bfloat16 weights, not "
                                       f"{weight.dtype}: use use_triton=False (or None)")
        return _FusedBag.apply(weight, ids, lookup, pool)
    return _reference(weight, ids, lookup, pool)

