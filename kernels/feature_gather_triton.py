"""Triton kernel: zero-copy row gather with 128-byte-aligned reads (PyTorch-Direct, Min et al., VLDB 2021).

The feature table may live in pinned host memory: on CUDA, Triton kernels accept pointers to pinned CPU
tensors (unified virtual addressing), so GPU threads read the sampled rows straight over PCIe/NVLink,
with no CPU gather and no staging copy. A device-resident table works the same way.

Each program gathers a tile of ``ROWS`` rows and walks them in ``BLOCK``-element chunks. Following
PyTorch-Direct, a row that starts at element offset ``s`` is read from the 128-byte boundary at or below
``s`` (``ALIGN = 128 / element size`` elements: 32 floats, 64 halfs) and the leading/trailing elements
are masked off, so every chunk covers whole aligned 128-byte segments even for widths like 100 or 3:
no memory transaction straddles a segment boundary. Offsets are measured from the 128-byte boundary
below the table's base pointer (``shift`` elements before it), so the alignment holds for any base
address. All address arithmetic is int64.

Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors (tests). Inputs are trusted here: the caller
(:func:`kernels.feature_gather.gather_rows`, :class:`recsys.gcn.features.NodeFeatureStore`) validates ids.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

SEGMENT_BYTES = 128  # one aligned global-memory transaction (PyTorch-Direct aligns each warp's reads to it)
TILE_ELEMENTS = 2048  # ROWS * BLOCK: elements one program covers per chunk step
MAX_BLOCK_BYTES = 2048  # a chunk never exceeds this many bytes of one row


@triton.jit
def _gather_rows_kernel(
    table_ptr, ids_ptr, out_ptr, num_ids, dim, shift,
    ALIGN: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    valid = rows < num_ids
    node = tl.load(ids_ptr + rows, mask=valid, other=0).to(tl.int64)
    start = node * dim + shift  # element offset from the aligned boundary below the table base
    first = start - start % ALIGN
    stop = start + dim
    span = tl.max(tl.where(valid, stop - first, 0), axis=0).to(tl.int32)
    out_row = rows * dim - start  # out element = out_row + table element offset
    lanes = tl.arange(0, BLOCK)
    for base in range(0, span, BLOCK):
        offs = first[:, None] + base + lanes[None, :]
        mask = valid[:, None] & (offs >= start[:, None]) & (offs < stop[:, None])
        vals = tl.load(table_ptr + (offs - shift), mask=mask)
        tl.store(out_ptr + (out_row[:, None] + offs), vals, mask=mask)


def launch_shape(dim: int, element_size: int) -> tuple[int, int, int]:
    """``(ALIGN, BLOCK, ROWS)`` for rows of ``dim`` elements of ``element_size`` bytes.

    BLOCK is a power of two, at least one aligned segment and at least the row width (up to
    ``MAX_BLOCK_BYTES``), so a chunk is a whole number of aligned segments; ROWS fills the tile.
    """
    align = max(1, SEGMENT_BYTES // element_size)
    block = max(align, min(triton.next_power_of_2(max(dim, 1)), max(align, MAX_BLOCK_BYTES // element_size)))
    return align, block, max(1, TILE_ELEMENTS // block)


def gather_rows_triton(
    table: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``table[ids]`` gathered by the kernel onto ``ids``' device (``out`` must live there too).

    ``table``: 2-D contiguous, on that device or (on CUDA) in pinned host memory; ``ids``: 1-D int32/int64.
    """
    ids = ids.contiguous()  # the kernel reads ids[i] at ids_ptr + i: a strided view (ids[::2]) is copied
    num_ids, dim = ids.shape[0], table.shape[1]
    if out is None:
        out = torch.empty((num_ids, dim), dtype=table.dtype, device=ids.device)
    if num_ids == 0 or dim == 0:
        return out
    align, block, rows = launch_shape(dim, table.element_size())
    shift = (table.data_ptr() % SEGMENT_BYTES) // table.element_size()
    on_cuda = out.device.type == "cuda"
    with torch.cuda.device(out.device) if on_cuda else contextlib.nullcontext():
        _gather_rows_kernel[(triton.cdiv(num_ids, rows),)](
            table, ids, out, num_ids, dim, shift, ALIGN=align, BLOCK=block, ROWS=rows,
        )
    return out
