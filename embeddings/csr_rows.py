"""Pruned embedding rows stored sparsely: the serving table of the pruning methods.

DeepLight, PEP, AutoSrh and OptEmbed end with a table in which most of the ``num_features x dim``
weights are zero. The VLDB 2024 benchmark ("Experimental Analysis of Large-scale Learnable Vector
Storage Compression") stores such a table as CSR / COO and counts the index against the budget; so
does :class:`SparseRowsTable`, in whichever of two layouts holds more weights within the budget:

- ``"csr"``: ``indptr[num_features + 1]`` (int16 / int32 / int64, the narrowest that holds ``nnz``),
  column ``indices[nnz]`` (uint8 when ``dim <= 256``) and float32 ``values[nnz]``. About 5 bytes per
  kept weight plus 2-4 bytes per row: the layout of choice above a few percent density.
- ``"coo"``: sorted flat keys ``row * dim + col`` (int32, int64 past 2^31 weights) and float32
  ``values[nnz]``: 8 bytes per kept weight and nothing per row, so it is the only layout that fits
  budgets smaller than the row pointers (e.g. 1% of Frappe's table). Lookup binary-searches each of a
  row's ``dim`` keys (``torch.searchsorted``).

:func:`max_nonzeros` sizes a pruned table for a byte budget, :func:`magnitude_mask` picks the weights
to keep and :meth:`SparseRowsTable.from_dense` packs them. ``values`` is a parameter, so the packed
table can still be fine-tuned; pruned weights read as exact zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from sparsekit.errors import InputError

LAYOUTS = ("csr", "coo")
FIELD_OFFSET_BYTES = 8  # the int64 field offsets of EmbeddingTable
_INDEX_DTYPES = (torch.int16, torch.int32, torch.int64)


def index_dtype(largest: int) -> torch.dtype:
    """The narrowest signed integer dtype (int16 and up) that holds ``largest``."""
    for dtype in _INDEX_DTYPES:
        if largest <= torch.iinfo(dtype).max:
            return dtype
    raise InputError("index", f"{largest} does not fit in int64")


def column_dtype(dim: int) -> torch.dtype:
    """The dtype of CSR column indices for rows of ``dim`` weights."""
    return torch.uint8 if dim <= 256 else index_dtype(dim - 1)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def layout_bytes(layout: str, num_rows: int, dim: int, nnz: int) -> int:
    """Bytes a ``layout`` table of ``nnz`` kept weights stores (index included)."""
    if layout == "csr":
        pointer = (num_rows + 1) * _itemsize(index_dtype(nnz))
        return pointer + nnz * (_itemsize(column_dtype(dim)) + FLOAT_BYTES)
    if layout == "coo":
        return nnz * (_itemsize(index_dtype(num_rows * dim - 1)) + FLOAT_BYTES)
    raise InputError("layout", f"unknown sparse layout {layout!r} (known: {LAYOUTS})")


def _largest_nnz(layout: str, num_rows: int, dim: int, available: int) -> int:
    """The most kept weights ``layout`` stores in ``available`` bytes (-1 when even zero do not fit)."""
    low, high = -1, num_rows * dim  # layout_bytes is monotone in nnz: bisect on the exact count
    while low < high:
        mid = (low + high + 1) // 2
        if layout_bytes(layout, num_rows, dim, mid) <= available:
            low = mid
        else:
            high = mid - 1
    return low


def max_nonzeros(num_rows: int, dim: int, available: int) -> tuple[str, int]:
    """``(layout, nnz)``: the layout holding the most weights in ``available`` bytes, and how many."""
    best = max(LAYOUTS, key=lambda layout: _largest_nnz(layout, num_rows, dim, available))
    return best, _largest_nnz(best, num_rows, dim, available)


def sparse_budget(table: EmbeddingTable) -> tuple[str, int]:
    """``(layout, nnz)`` for a pruned version of ``table``: its budget minus the field offsets every
    table with ``field_dims`` stores. Raises :class:`BudgetError` when not one weight fits."""
    fixed = 0 if table.field_dims is None else table.field_offsets.numel() * FIELD_OFFSET_BYTES
    if fixed > table.budget_bytes():
        raise BudgetError(table.kind, f"the {fixed} bytes of field offsets alone exceed the budget of "
                                      f"{table.budget_bytes()} bytes")
    layout, nnz = max_nonzeros(table.num_features, table.dim, table.budget_bytes() - fixed)
    if nnz < 1:
        raise BudgetError(
            table.kind, f"{table.budget_bytes()} bytes cannot hold one sparse weight and its index"
        )
    return layout, nnz


def magnitude_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest ``|scores|`` (exactly ``keep`` of them, ties broken by
    position), the rule of magnitude pruning."""
    flat = scores.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep >= flat.numel():
        mask[:] = True
    elif keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(scores)


class SparseRowsTable(EmbeddingTable):
    """A pruned ``[num_features, dim]`` table stored as CSR or COO; absent weights are zero."""

    kind = "csr-rows"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        layout: str = "csr",
        nnz: int = 0,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if layout not in LAYOUTS:
            raise InputError("layout", f"unknown sparse layout {layout!r} (known: {LAYOUTS})")
        if not 0 <= nnz <= num_features * dim:
            raise InputError("nnz", f"must be in [0, {num_features * dim}], got {nnz}")
        self.layout, self.nnz = layout, int(nnz)
        if layout == "csr":
            self.register_buffer("indptr", torch.zeros(num_features + 1, dtype=index_dtype(nnz)))
            self.register_buffer("indices", torch.zeros(nnz, dtype=column_dtype(dim)))
        else:
            keys = torch.arange(nnz, dtype=index_dtype(num_features * dim - 1))
            self.register_buffer("keys", keys)
        self.values = nn.Parameter(torch.zeros(nnz))
        self.check_budget()

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        budget: float,
        *,
        field_dims: Sequence[int] | None = None,
        layout: str | None = None,
    ) -> SparseRowsTable:
        """Pack the nonzeros of ``weight [num_features, dim]`` (default layout: the smaller one)."""
        weight = weight.detach()
        rows, cols = weight.nonzero(as_tuple=True)  # row-major order: sorted keys, CSR order
        num_features, dim = weight.shape
        nnz = int(rows.numel())
        if layout is None:
            layout = min(LAYOUTS, key=lambda name: layout_bytes(name, num_features, dim, nnz))
        table = cls(num_features, dim, budget, field_dims=field_dims, layout=layout, nnz=nnz)
        table.to(weight.device)
        with torch.no_grad():
            table.values.copy_(weight[rows, cols])
            if layout == "csr":
                counts = torch.bincount(rows, minlength=num_features)
                table.indptr[1:] = counts.cumsum(0).to(table.indptr.dtype)
                table.indices.copy_(cols.to(table.indices.dtype))
            else:
                table.keys.copy_((rows * dim + cols).to(table.keys.dtype))
        return table

    def options(self) -> dict[str, Any]:
        return {"layout": self.layout, "nnz": self.nnz}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if self.nnz == 0:
            out = self.values.new_zeros(flat.numel(), self.dim)
        elif self.layout == "csr":
            out = self._lookup_csr(flat)
        else:
            out = self._lookup_coo(flat)
        return out.reshape(*ids.shape, self.dim)

    def _lookup_csr(self, flat: torch.Tensor) -> torch.Tensor:
        start = self.indptr[flat].long()
        count = self.indptr[flat + 1].long() - start
        slot = torch.arange(self.dim, device=flat.device)
        valid = slot < count[:, None]
        pos = (start[:, None] + slot).clamp_(max=self.nnz - 1)
        values = self.values[pos] * valid
        cols = torch.where(valid, self.indices[pos].long(), 0)
        return values.new_zeros(flat.numel(), self.dim).scatter_add(1, cols, values)

    def _lookup_coo(self, flat: torch.Tensor) -> torch.Tensor:
        wanted = flat[:, None] * self.dim + torch.arange(self.dim, device=flat.device)
        wanted = wanted.to(self.keys.dtype)
        pos = torch.searchsorted(self.keys, wanted).clamp_(max=self.nnz - 1)
        return self.values[pos] * (self.keys[pos] == wanted)

    def to_dense(self) -> torch.Tensor:
        """The ``[num_features, dim]`` matrix this table stores (zeros where pruned)."""
        return self.lookup(torch.arange(self.num_features, device=self.values.device)).detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout}, nnz={self.nnz}"
