"""The sparse serving table of the pruning methods: layout sizing, packing, lookup and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from embeddings.csr_rows import (
    SparseRowsTable,
    layout_bytes,
    magnitude_mask,
    max_nonzeros,
)
from embeddings.table import BudgetError

FRAPPE_FULL = 5382 * 16 * 4


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(0.5, ("csr", 32275)), (0.1, ("csr", 4719)), (0.01, ("coo", 420)), (0.001, ("coo", 33))],
)
def test_max_nonzeros_on_frappe(budget: float, expected: tuple[str, int]) -> None:
    available = int(budget * FRAPPE_FULL) - 80  # minus the field offsets
    layout, nnz = max_nonzeros(5382, 16, available)
    assert (layout, nnz) == expected
    assert layout_bytes(layout, 5382, 16, nnz) <= available
    assert all(layout_bytes(other, 5382, 16, nnz + 1) > available for other in ("csr", "coo"))


def test_layout_bytes_formulas() -> None:
    assert layout_bytes("csr", 10, 16, 100) == 11 * 2 + 100 * (1 + 4)  # int16 pointers, uint8 columns
    assert layout_bytes("csr", 10, 16, 40000) == 11 * 4 + 40000 * 5  # int32 pointers past 32767
    assert layout_bytes("coo", 10, 16, 100) == 100 * (2 + 4)  # 160 flat positions fit int16 keys
    assert layout_bytes("coo", 10**6, 16, 100) == 100 * (4 + 4)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    dim=st.integers(1, 9),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    layout=st.sampled_from(["csr", "coo"]),
)
def test_from_dense_round_trips(rows: int, dim: int, density: float, seed: int, layout: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=gen) * (torch.rand(rows, dim, generator=gen) < density)
    nnz = int((weight != 0).sum())
    assume(layout_bytes(layout, rows, dim, nnz) <= rows * dim * 4)  # sparse enough to be worth storing
    table = SparseRowsTable.from_dense(weight, 1.0, layout=layout)
    assert table.nnz == nnz and table.layout == layout
    assert torch.equal(table.to_dense(), weight)
    assert table.memory_bytes() == layout_bytes(layout, rows, dim, nnz)
    ids = torch.randint(0, rows, (5, 3), generator=gen)
    assert torch.equal(table.lookup(ids), weight[ids])


def test_default_layout_is_the_smaller_and_fields_are_kept() -> None:
    dense = torch.zeros(100, 8)
    dense[3, 1] = 1.0
    assert SparseRowsTable.from_dense(dense, 1.0).layout == "coo"
    half = torch.randn(100, 8) * (torch.arange(8) < 4)
    assert SparseRowsTable.from_dense(half, 1.0).layout == "csr"
    table = SparseRowsTable.from_dense(dense, 0.01, field_dims=[60, 40])
    assert table.memory_bytes() == layout_bytes("coo", 100, 8, 1) + 2 * 8
    assert table(torch.tensor([[3, 60]]))[0, 0, 1] == 1.0


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_gradients_reach_only_looked_up_values(layout: str) -> None:
    weight = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    table = SparseRowsTable.from_dense(weight, 1.0, layout=layout)
    table.lookup(torch.tensor([2, 2, 1])).sum().backward()
    assert table.values.grad.tolist() == [0.0, 0.0, 2.0, 2.0]


def test_over_budget_table_is_a_budget_error() -> None:
    with pytest.raises(BudgetError):
        SparseRowsTable(100, 16, 0.01, layout="csr", nnz=10)  # 64 bytes: not even the row pointers


def test_magnitude_mask_keeps_exactly_the_largest() -> None:
    scores = torch.tensor([[0.5, -3.0], [0.0, 2.0], [-1.0, 0.1]])
    assert magnitude_mask(scores, 2).tolist() == [[False, True], [False, True], [False, False]]
    assert int(magnitude_mask(torch.ones(4, 4), 5).sum()) == 5  # ties: still exactly ``keep``
    assert bool(magnitude_mask(scores, 10).all()) and not bool(magnitude_mask(scores, 0).any())
