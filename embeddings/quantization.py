"""Quantized embedding tables: INT8 / INT16 codes with per-row (or per-field) scales, and the serving
table shared with ALPT (:mod:`embeddings.alpt`).

The quantization entries of the VLDB 2024 benchmark ("Experimental Analysis of Large-scale Learnable
Vector Storage Compression"): each weight is stored as a ``bits``-bit integer code ``q`` and read as
``q * scale``. :class:`QuantizedTable` stores exactly that: the codes (int16, int8, or 2 / 4 codes packed
per uint8 for 4- and 2-bit, a bit stream for 3-bit) and float32 or float16 scales, one per row, per
field, per table, or per field and column (``"field_column"``, the learned steps of
:mod:`embeddings.lsq`).

:class:`Int8Table` (kind ``"int8"``) and :class:`Int16Table` (``"int16"``) train by quantization-aware
training with the straight-through estimator (STE): a float32 master table is fake-quantized in every
forward pass (``q = clamp(round(w / s), -qmax, qmax)`` with the symmetric scale ``s = max|w| / qmax``
of the row or field, no zero point) and gradients pass through the rounding unchanged. The master table
exists only while training; :meth:`~embeddings.table.EmbeddingTable.finalize` stores the codes and
scales, so the serving table returns what the model was trained and validated with.

Budget: the codes alone are 1/4 (INT8) or 1/2 (INT16) of the float32 table. Scales are per row when they
fit (``granularity="auto"``), else per field, else one per table: at dim 16, INT8 with row scales needs
31.25% of the budget and INT16 fits 50% only with field scales (within the 2% slack). Below that,
:class:`BudgetError`. Quantized tables are sized against ``BUDGET_SLACK x budget`` (codes come in whole
rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from embeddings.table import BUDGET_SLACK, BudgetError, EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError

GRANULARITIES = ("row", "field", "table", "field_column")
SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
PACKED_BITS = (2, 3, 4)
QAT_GRANULARITIES = ("row", "field", "table")  # the max-abs scales of INT8 / INT16 QAT
CODE_DTYPES = {8: torch.int8, 16: torch.int16}


def code_range(bits: int) -> tuple[int, int]:
    """The signed code range ``[-2^(bits-1), 2^(bits-1) - 1]``."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def row_code_bytes(dim: int, bits: int) -> int:
    """Bytes of one row of ``dim`` codes (packed rows are padded to whole bytes)."""
    return -(-dim * bits // 8)


def scale_count(
    granularity: str, num_features: int, field_dims: Sequence[int] | None, dim: int = 1
) -> int:
    """How many scales ``granularity`` stores (``dim`` matters only for ``"field_column"``)."""
    if granularity == "row":
        return num_features
    if granularity == "field":
        if field_dims is None:
            raise InputError("granularity", "field-wise scales need field_dims")
        return len(field_dims)
    if granularity == "table":
        return 1
    if granularity == "field_column":
        return scale_count("field", num_features, field_dims) * dim
    raise InputError("granularity", f"unknown scale granularity {granularity!r} (known: {GRANULARITIES})")


def quantized_bytes(
    num_features: int, dim: int, bits: int, granularity: str, scale_dtype: str,
    field_dims: Sequence[int] | None,
) -> int:
    """Bytes of codes and scales (not the field offsets)."""
    scale_size = torch.empty(0, dtype=SCALE_DTYPES[scale_dtype]).element_size()
    codes = num_features * row_code_bytes(dim, bits)
    return codes + scale_count(granularity, num_features, field_dims, dim) * scale_size


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes ``[N, dim]`` -> their storage: int8 / int16, uint8 with ``8 // bits`` per byte (2- and
    4-bit), or a little-endian bit stream per row padded to whole bytes (3-bit)."""
    if bits in CODE_DTYPES:
        return codes.to(CODE_DTYPES[bits])
    if bits not in PACKED_BITS:
        raise InputError("bits", f"supported widths are 2, 3, 4, 8 and 16, got {bits}")
    low, _ = code_range(bits)
    unsigned = (codes.long() - low).to(torch.uint8)
    if 8 % bits:
        return _pack_stream(unsigned, bits)
    per_byte = 8 // bits
    pad = -codes.shape[1] % per_byte
    unsigned = torch.nn.functional.pad(unsigned, (0, pad)).view(codes.shape[0], -1, per_byte)
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.uint8) * bits
    return (unsigned << shifts).sum(dim=2, dtype=torch.uint8)


def unpack_codes(stored: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes` on gathered rows ``[M, row_bytes]``: signed int64 codes ``[M, dim]``."""
    if bits in CODE_DTYPES:
        return stored.long()
    low, _ = code_range(bits)
    if 8 % bits:
        return _unpack_stream(stored, bits, dim) + low
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=stored.device, dtype=torch.uint8) * bits
    fields = (stored[..., None] >> shifts) & (2**bits - 1)
    return fields.flatten(-2)[..., :dim].long() + low


def _pack_stream(unsigned: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[N, dim]`` as one little-endian bit stream per row, padded to whole bytes (the
    layout of the 2- and 4-bit packing, for widths that do not divide a byte)."""
    rows, dim = unsigned.shape
    planes = (unsigned[..., None] >> torch.arange(bits, device=unsigned.device, dtype=torch.uint8)) & 1
    stream = torch.nn.functional.pad(planes.reshape(rows, dim * bits), (0, -dim * bits % 8))
    weights = torch.arange(8, device=unsigned.device, dtype=torch.uint8)
    return (stream.view(rows, -1, 8) << weights).sum(dim=2, dtype=torch.uint8)


def _unpack_stream(stored: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`_pack_stream` on gathered rows ``[..., row_bytes]``: unsigned int64 codes."""
    weights = torch.arange(8, device=stored.device, dtype=torch.uint8)
    stream = ((stored[..., None] >> weights) & 1).flatten(-2)[..., : dim * bits]
    planes = stream.reshape(*stored.shape[:-1], dim, bits).long()
    return (planes << torch.arange(bits, device=stored.device)).sum(dim=-1)


class QuantizedTable(EmbeddingTable):
    """Integer codes times per-row / per-field / per-table / per-field-and-column scales: the serving
    form of INT8, INT16, ALPT and LSQ tables. Stores only buffers (codes and scales)."""

    kind = "quantized"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        bits: int = 8,
        granularity: str = "row",
        scale_dtype: str = "float32",
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if bits not in (*PACKED_BITS, *CODE_DTYPES):
            raise InputError("bits", f"supported widths are 2, 3, 4, 8 and 16, got {bits}")
        if scale_dtype not in SCALE_DTYPES:
            raise InputError("scale_dtype", f"one of {sorted(SCALE_DTYPES)}, got {scale_dtype!r}")
        self.bits, self.granularity, self.scale_dtype = int(bits), granularity, scale_dtype
        scales = scale_count(granularity, num_features, field_dims, dim)
        width = dim if self.bits in CODE_DTYPES else row_code_bytes(dim, self.bits)
        storage = CODE_DTYPES.get(self.bits, torch.uint8)
        self.register_buffer("codes", torch.zeros(num_features, width, dtype=storage))
        self.register_buffer("scales", torch.ones(scales, dtype=SCALE_DTYPES[scale_dtype]))
        self.check_budget()

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        budget: float,
        *,
        bits: int,
        granularity: str,
        scale_dtype: str = "float32",
        field_dims: Sequence[int] | None = None,
    ) -> QuantizedTable:
        """The table storing signed ``codes [N, dim]`` and ``scales`` (one per row / field / table, or
        ``[fields, dim]`` for ``"field_column"``)."""
        table = cls(
            codes.shape[0], codes.shape[1], budget, field_dims=field_dims,
            bits=bits, granularity=granularity, scale_dtype=scale_dtype,
        ).to(codes.device)
        table.codes.copy_(pack_codes(codes, bits))
        table.scales.copy_(scales.detach().reshape(-1))
        return table

    def options(self) -> dict[str, Any]:
        return {"bits": self.bits, "granularity": self.granularity, "scale_dtype": self.scale_dtype}

    def scale_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The float32 scales of each id: ``[..., 1]``, or ``[..., dim]`` for ``"field_column"``."""
        if self.granularity == "field_column":
            return self.scales.view(-1, self.dim)[self.field_of(ids)].float()
        if self.granularity == "row":
            index = ids
        elif self.granularity == "field":
            index = self.field_of(ids)
        else:
            index = torch.zeros_like(ids)
        return self.scales[index].float()[..., None]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        codes = unpack_codes(self.codes[ids], self.bits, self.dim)
        return codes.float() * self.scale_of(ids)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, scales={self.granularity}:{self.scale_dtype}"


def fits(table: EmbeddingTable, stored: int) -> bool:
    """Whether ``stored`` bytes plus the field offsets are within the budget (with the 2% slack)."""
    return table.memory_bytes() + stored <= BUDGET_SLACK * table.budget_bytes()


class FakeQuantTable(EmbeddingTable):
    """Quantization-aware training of a ``bits``-bit table (float master weights, STE rounding)."""

    bits: ClassVar[int] = 8

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        granularity: str = "auto",
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        self.init_std = float(init_std)
        self.granularity = self._granularity(granularity)
        self.qmax = code_range(self.bits)[1]
        self.weight = nn.Parameter(torch.randn(num_features, dim) * self.init_std)

    def _granularity(self, granularity: str) -> str:
        if granularity not in ("auto", *QAT_GRANULARITIES):
            raise InputError("granularity", f"one of {('auto', *QAT_GRANULARITIES)}, got {granularity!r}")
        wanted = QAT_GRANULARITIES if granularity == "auto" else (granularity,)
        for name in wanted:
            if name == "field" and self.field_dims is None and granularity == "auto":
                continue
            stored = quantized_bytes(self.num_features, self.dim, self.bits, name, "float32", self.field_dims)
            if fits(self, stored):
                return name
        raise BudgetError(
            self.kind, f"{self.bits}-bit codes with {granularity} scales exceed {self.budget_bytes()} bytes"
        )

    def options(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "init_std": self.init_std}

    def scales(self) -> torch.Tensor:
        """Current symmetric scales ``max|w| / qmax`` (one per row / field / table), detached."""
        magnitude = self.weight.detach().abs().amax(dim=1)
        if self.granularity == "field":
            fields = self.field_of(torch.arange(self.num_features, device=magnitude.device))
            magnitude = magnitude.new_zeros(len(self.field_dims)).scatter_reduce(0, fields, magnitude, "amax")
        elif self.granularity == "table":
            magnitude = magnitude.max().reshape(1)
        return magnitude.clamp_min(torch.finfo(torch.float32).tiny) / self.qmax

    def _scale_of(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.granularity == "row":
            magnitude = rows.detach().abs().amax(dim=-1)
            return magnitude.clamp_min(torch.finfo(torch.float32).tiny) / self.qmax
        scales = self.scales()
        return scales[self.field_of(ids)] if self.granularity == "field" else scales[0].expand(ids.shape)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = lookup_rows(self.weight, ids)
        scale = self._scale_of(ids, rows)[..., None]
        quantized = (rows / scale).round().clamp(-self.qmax, self.qmax) * scale
        return rows + (quantized - rows).detach()  # straight-through estimator

    def finalize(self) -> EmbeddingTable:
        scales = self.scales()
        per_row = scales if self.granularity == "row" else (
            scales[self.field_of(torch.arange(self.num_features, device=scales.device))]
            if self.granularity == "field" else scales.expand(self.num_features)
        )
        codes = (self.weight.detach() / per_row[:, None]).round().clamp(-self.qmax, self.qmax)
        return QuantizedTable.from_codes(
            codes, scales, self.budget,
            bits=self.bits, granularity=self.granularity, field_dims=self.field_dims,
        )


class Int8Table(FakeQuantTable):
    """INT8 codes with (by default) per-row float32 scales; QAT with the STE."""

    kind = "int8"
    bits = 8


class Int16Table(FakeQuantTable):
    """INT16 codes with per-field (or per-table) float32 scales at budget 0.5; QAT with the STE."""

    kind = "int16"
    bits = 16
