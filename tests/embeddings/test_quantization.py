"""INT8 / INT16 tables: code packing, straight-through QAT, scale granularity under the budget, serving."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.quantization import (
    Int8Table,
    Int16Table,
    QuantizedTable,
    code_range,
    pack_codes,
    unpack_codes,
)
from embeddings.table import BudgetError
from sparsekit.errors import InputError

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8, 16]),
    rows=st.integers(1, 6),
    dim=st.integers(1, 11),
    seed=st.integers(0, 999),
)
def test_pack_unpack_round_trips(bits: int, rows: int, dim: int, seed: int) -> None:
    low, high = code_range(bits)
    codes = torch.randint(low, high + 1, (rows, dim), generator=torch.Generator().manual_seed(seed))
    packed = pack_codes(codes, bits)
    assert packed.element_size() * packed.shape[1] == -(-dim * bits // 8)  # whole bytes per row
    assert torch.equal(unpack_codes(packed, bits, dim), codes)


def test_scale_granularity_follows_the_budget() -> None:
    assert Int8Table(5382, 16, 0.5, field_dims=FRAPPE_FIELDS).granularity == "row"
    assert Int16Table(5382, 16, 0.5, field_dims=FRAPPE_FIELDS).granularity == "field"
    assert Int16Table(5382, 16, 0.5).granularity == "table"
    with pytest.raises(BudgetError):
        Int8Table(5382, 16, 0.2, field_dims=FRAPPE_FIELDS)  # codes alone are a quarter
    with pytest.raises(InputError) as info:
        Int8Table(5382, 16, 0.5, field_dims=FRAPPE_FIELDS, granularity="nope")
    assert info.value.source == "granularity"


def test_fake_quantization_rounds_forward_and_passes_gradients_straight_through() -> None:
    table = Int8Table(20, 4)
    with torch.no_grad():
        table.weight.normal_()
    ids = torch.tensor([[1, 5], [7, 7]])
    out = table(ids)
    scale = table.weight[ids].abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(out, (table.weight[ids] / scale).round() * scale)
    assert bool(((out - table.weight[ids]).abs() <= scale / 2 + 1e-7).all())
    grad = torch.randn(out.shape)
    out.backward(grad)
    expected = torch.zeros(20, 4).index_put_((ids.flatten(),), grad.reshape(-1, 4), accumulate=True)
    assert torch.allclose(table.weight.grad, expected)


def test_finalize_stores_int_codes_and_scales() -> None:
    table = Int8Table(5382, 16, 0.5, field_dims=FRAPPE_FIELDS)
    serving = table.finalize()
    assert isinstance(serving, QuantizedTable) and serving.codes.dtype == torch.int8
    assert serving.memory_bytes() == 5382 * 16 + 5382 * 4 + 80
    assert not list(serving.parameters())
    wide = Int16Table(5382, 16, 0.5, field_dims=FRAPPE_FIELDS).finalize()
    assert wide.codes.dtype == torch.int16 and wide.scales.numel() == 10


def test_packed_serving_table_bytes() -> None:
    table = QuantizedTable(100, 16, 0.2, bits=2, granularity="row", scale_dtype="float16")
    assert table.codes.dtype == torch.uint8 and table.codes.shape == (100, 4)
    assert table.memory_bytes() == 100 * 4 + 100 * 2
