"""Dispatcher for gathering feature-table rows: zero-copy Triton kernel on CUDA, ``index_select`` otherwise.

Implements the gather step of PyTorch-Direct (Min et al., VLDB 2021) for sampled GNN training: when the
rows are wanted on a CUDA device and the table is readable from it (pinned host memory through unified
virtual addressing, or device memory), the Triton kernel (:mod:`kernels.feature_gather_triton`) reads
them directly with 128-byte-aligned transactions. Anywhere else (CPU output, triton missing, pageable
host table, an unsupported dtype) the torch reference (:mod:`kernels.feature_gather_reference`) gathers
on the table's device and copies the rows over.
"""

from __future__ import annotations

import torch

from kernels import triton_available
from kernels.feature_gather_reference import gather_rows_reference
from sparsekit.errors import InputError

KERNEL_DTYPES = frozenset({
    torch.float32, torch.float16, torch.bfloat16, torch.float64,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
})
ID_DTYPES = frozenset({torch.int32, torch.int64})


def readable_from(table: torch.Tensor, device: torch.device) -> bool:
    """Whether a kernel on CUDA ``device`` can read ``table``: it lives there, or in pinned host memory."""
    return table.device == device or (table.device.type == "cpu" and table.is_pinned())


def _check(table: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None) -> None:
    if table.dim() != 2 or not table.is_contiguous():
        raise InputError("table", f"must be a 2-D contiguous tensor, got shape {tuple(table.shape)}")
    if ids.dim() != 1 or ids.dtype not in ID_DTYPES:
        raise InputError("ids", f"must be a 1-D int32/int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
    want = (ids.shape[0], table.shape[1])
    if out is not None and (tuple(out.shape) != want or out.dtype != table.dtype or not out.is_contiguous()):
        raise InputError("out", f"must be a contiguous {table.dtype} tensor of shape {want}, "
                                f"got {out.dtype} {tuple(out.shape)}")


def gather_rows(
    table: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``table[ids]`` on ``out``'s device, else ``device``, else ``ids``' device; written into ``out``.

    CUDA output + triton + a table readable from that device (pinned host or on-device) -> the Triton
    kernel; otherwise ``index_select``. Ids are trusted to be in range (callers validate them).
    """
    _check(table, ids, out)
    target = torch.device(out.device if out is not None else device if device is not None else ids.device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if (target.type == "cuda" and triton_available() and table.dtype in KERNEL_DTYPES
            and readable_from(table, target)):
        from kernels.feature_gather_triton import gather_rows_triton

        return gather_rows_triton(table, ids.to(target, non_blocking=True), out)
    return gather_rows_reference(table, ids, out, device=target)
