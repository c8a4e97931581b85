"""Mixed-dimension embeddings: the power-law width rule under a budget, explicit widths, block lookup."""

from __future__ import annotations

import pytest
import torch

from embeddings.mde import MixedDimTable, block_bytes, power_law_dims
from embeddings.table import BudgetError
from sparsekit.errors import InputError

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


def test_block_bytes_counts_the_projection() -> None:
    assert block_bytes(100, 4, 16) == (100 * 4 + 4 * 16) * 4
    assert block_bytes(100, 16, 16) == 100 * 16 * 4


def test_power_law_gives_big_blocks_narrow_rows() -> None:
    sizes = [1000, 100, 10]
    dims = power_law_dims(sizes, 16, alpha=0.5, available=20_000)
    assert dims[0] <= dims[1] <= dims[2] and dims[0] < 16
    assert sum(block_bytes(n, d, 16) for n, d in zip(sizes, dims, strict=True)) <= 20_000
    uniform = power_law_dims([1000, 1000], 16, alpha=0.0, available=40_000)
    assert uniform[0] == uniform[1]
    assert power_law_dims(sizes, 16, alpha=0.5, available=100) is None


def test_more_budget_never_narrows_a_block() -> None:
    small = MixedDimTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS).dims
    large = MixedDimTable(5382, 16, 0.5, field_dims=FRAPPE_FIELDS).dims
    assert all(a <= b for a, b in zip(small, large, strict=True))
    assert small[1] == min(small)  # the 4,082-item field gets the narrowest rows


def test_frappe_budget_below_one_dimension_per_field_is_infeasible() -> None:
    with pytest.raises(BudgetError):
        MixedDimTable(5382, 16, 0.05, field_dims=FRAPPE_FIELDS)


def test_lookup_is_rows_times_projection_per_block() -> None:
    table = MixedDimTable(30, 8, field_dims=[20, 10], dims=[3, 8])
    ids = torch.tensor([[0, 20], [19, 29]])
    out = table(ids)
    assert torch.allclose(out[:, 0], table.rows[0][ids[:, 0]] @ table.projections[0])
    assert torch.equal(out[:, 1], table.rows[1][ids[:, 1] - 20])  # full width: no projection
    assert len(table.projections) == 1
    assert table.memory_bytes() == (20 * 3 + 3 * 8 + 10 * 8) * 4 + 2 * 8


def test_blocks_without_fields_and_bad_options() -> None:
    table = MixedDimTable(30, 8, 0.5, blocks=[10, 20], alpha=0.5)
    assert table.lookup(torch.arange(30)).shape == (30, 8)
    with pytest.raises(InputError):
        MixedDimTable(30, 8, blocks=[10, 10])
    with pytest.raises(InputError):
        MixedDimTable(30, 8, blocks=[10, 20], dims=[9, 1])
    with pytest.raises(InputError):
        MixedDimTable(30, 8, alpha=-1.0)
