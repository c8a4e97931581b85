"""Plain torch reference for gathering feature-table rows: ``index_select`` on the table's device.

The ground truth that the Triton zero-copy gather (:mod:`kernels.feature_gather_triton`; PyTorch-Direct,
Min et al., VLDB 2021) is tested against, and the path :func:`kernels.feature_gather.gather_rows` takes
wherever the Triton kernel cannot run (no CUDA output device, no triton, or a host table that is not
pinned): gather on the table's device, then copy the rows to the output device.
"""

from __future__ import annotations

import torch


def gather_rows_reference(
    table: torch.Tensor,
    ids: torch.Tensor,
    out: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``table[ids]`` on ``out``'s device (else ``device``, else the table's); written into ``out``."""
    rows = torch.index_select(table, 0, ids.to(table.device, torch.int64))
    if out is not None:
        out.copy_(rows)
        return out
    return rows.to(device) if device is not None else rows
