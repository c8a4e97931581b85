"""Composition of two families of the VLDB 2024 benchmark ("Experimental Analysis of Large-scale Learnable
Vector Storage Compression"): a shared-row table (hashing trick, QR / compositional embeddings) whose rows
are stored as low-bit integer codes (the quantization family), as production systems store hashed
tables (e.g. FBGEMM's INT8 / INT4 table-batched embeddings). Kinds ``qr+int8``, ``qr+int4``,
``hashing+int8`` and ``hashing+int4``; faiss-style, the name reads "this table, stored this way".

- **Sizing.** A row of ``dim`` codes plus one float16 scale costs ``ceil(dim * bits / 8) + 2`` bytes instead
  of ``4 * dim``, so the inner table gets as many rows as the budget (less the field offsets) holds at
  that price, capped at the full table: at dim 16, 3.6x the float rows for INT8 and 6.4x for INT4.
- **Training** is quantization-aware with the straight-through estimator, as for the INT8 table
  (:mod:`embeddings.quantization`): the inner table's float rows are the master copy, and every forward
  pass reads them fake-quantized with symmetric per-row scales ``max|w| / qmax`` (rounded to float16,
  the precision they are stored in), so validation sees exactly what will serve.
- **Serving** (:meth:`finalize`): only the codes (INT8, or two INT4 codes per byte) and the float16
  scales are stored. A lookup computes the inner table's rows (the hash, or the mixed-radix digits),
  dequantizes just those rows and combines them as the inner table does.

The inner table (hashing or QR) supplies the row mapping; its ``weight`` is moved to this table, which
stores it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from embeddings.quantization import code_range, pack_codes, row_code_bytes, unpack_codes
from embeddings.table import BUDGET_SLACK, FLOAT_BYTES, BudgetError, EmbeddingTable, table_class
from kernels.embedding_bag_reference import mixed_radix_rows, universal_hash
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError

SCALE_BYTES = 2  # float16 row scales
INNER_KINDS = ("hashing", "qr")


class QuantizedRowsTable(EmbeddingTable):
    """An inner shared-row table whose ``weight`` rows are stored as ``bits``-bit codes + fp16 scales."""

    kind = "quantized_rows"
    inner_kind: ClassVar[str] = "qr"
    default_bits: ClassVar[int] = 8

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        table: str | None = None,
        bits: int | None = None,
        table_options: dict[str, Any] | None = None,
        served: bool = False,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        self.table_kind, self.bits = table or self.inner_kind, int(bits or self.default_bits)
        if self.table_kind not in INNER_KINDS:
            raise InputError("table", f"rows of {self.table_kind!r} cannot be quantized (use one of "
                                      f"{INNER_KINDS})")
        if self.bits not in (4, 8):
            raise InputError("bits", f"4 or 8, got {self.bits}")
        self.table_options, self.served = dict(table_options or {}), bool(served)
        self.qmax = code_range(self.bits)[1]
        row_bytes = row_code_bytes(dim, self.bits) + SCALE_BYTES
        try:  # ids stay global, so the inner table needs no field offsets of its own
            self.inner = table_class(self.table_kind)(num_features, dim, self._inner_budget(row_bytes),
                                                      **self.table_options)
        except BudgetError as exc:
            raise BudgetError(self.kind, exc.reason) from exc
        master = self.inner.weight.detach()
        del self.inner.weight  # the inner table supplies the row mapping; its rows live here, once
        stored = master.shape[0] * row_bytes + sum(b.numel() * b.element_size() for b in self.buffers())
        if served:
            width = master.shape[1] if self.bits == 8 else row_code_bytes(dim, self.bits)
            self.register_buffer("codes", torch.zeros(master.shape[0], width,
                                                      dtype=torch.int8 if self.bits == 8 else torch.uint8))
            self.register_buffer("scales", torch.ones(master.shape[0], dtype=torch.float16))
        else:
            self.weight = nn.Parameter(master.clone())
        if stored > BUDGET_SLACK * self.budget_bytes():
            raise BudgetError(self.kind, f"{master.shape[0]} rows of {row_bytes} bytes exceed the budget of "
                                         f"{self.budget_bytes()} bytes")

    def _inner_budget(self, row_bytes: int) -> float:
        """The float budget that gives the inner table as many rows as the budget holds at ``row_bytes``."""
        rows = max(1, self.room_bytes() // row_bytes)  # the room left by the field offsets
        return min(1.0, (rows * self.dim * FLOAT_BYTES + 0.5) / self.full_bytes())

    def options(self) -> dict[str, Any]:
        return {"table": self.table_kind, "bits": self.bits, "table_options": self.table_options,
                "served": self.served}

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (any shape) as every lookup reads them: fake-quantized master rows while training,
        dequantized codes when served. Only the gathered rows are touched either way."""
        if self.served:
            flat = rows.reshape(-1)
            codes = unpack_codes(self.codes[flat], self.bits, self.dim).float()
            return (codes * self.scales[flat].float()[:, None]).reshape(*rows.shape, self.dim)
        w = lookup_rows(self.weight, rows)
        scale = row_scales(w.detach(), self.qmax)[..., None]
        quantized = (w / scale).round().clamp(-self.qmax, self.qmax) * scale
        return w + (quantized - w).detach()  # straight-through estimator

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table_kind == "hashing":
            rows = universal_hash(ids.long(), self.inner.hash.a, self.inner.hash.b, self.inner.num_rows)
            return self._read(rows)
        spec = self.inner.spec
        parts = [self._read(rows) for rows in mixed_radix_rows(ids, spec)]
        out = parts[0]
        for part in parts[1:]:
            out = out * part if spec.combine == "mult" else out + part
        return out

    def finalize(self) -> EmbeddingTable:
        if self.served:
            return self
        scales = row_scales(self.weight.detach(), self.qmax)
        codes = (self.weight.detach() / scales[:, None]).round().clamp(-self.qmax, self.qmax).long()
        options = {**self.options(), "served": True}
        table = type(self)(self.num_features, self.dim, self.budget, field_dims=self.field_dims, **options)
        table = table.to(self.weight.device)
        table.codes.copy_(pack_codes(codes, self.bits))
        table.scales.copy_(scales.to(torch.float16))
        return table

    def extra_repr(self) -> str:
        rows = self.codes.shape[0] if self.served else self.weight.shape[0]
        return f"{super().extra_repr()}, table={self.table_kind}, rows={rows}, bits={self.bits}"


FP16_SMALLEST = 2.0**-24  # the smallest (subnormal) float16: small rows keep the whole code range
FP16_LARGEST = float(torch.finfo(torch.float16).max)


def row_scales(rows: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric scales ``max|w| / qmax`` over the last dim, at the float16 precision they are stored in
    (clamped to float16's range: a huge row saturates instead of overflowing)."""
    scale = (rows.abs().amax(dim=-1) / qmax).clamp(FP16_SMALLEST, FP16_LARGEST)
    return scale.to(torch.float16).float().clamp_min(FP16_SMALLEST)


class QRInt8Table(QuantizedRowsTable):
    """QR / compositional embeddings with INT8 rows."""

    kind = "qr+int8"
    inner_kind, default_bits = "qr", 8


class QRInt4Table(QuantizedRowsTable):
    """QR / compositional embeddings with INT4 rows."""

    kind = "qr+int4"
    inner_kind, default_bits = "qr", 4


class HashingInt8Table(QuantizedRowsTable):
    """The hashing trick with INT8 rows."""

    kind = "hashing+int8"
    inner_kind, default_bits = "hashing", 8


class HashingInt4Table(QuantizedRowsTable):
    """The hashing trick with INT4 rows."""

    kind = "hashing+int4"
    inner_kind, default_bits = "hashing", 4
