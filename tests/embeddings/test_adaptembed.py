"""AdaptEmbed: budget split into own and shared rows, gradient-based importance, row reallocation."""

from __future__ import annotations

import torch

from embeddings.adaptembed import AdaptEmbedTable, AllocatedRowsTable, plan_rows, shared_slot

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


def test_row_plan_fills_the_budget() -> None:
    assert plan_rows(5382, 16, 344 - 80, 0.2) == (3, 1)  # budget 0.001 of Frappe
    table = AdaptEmbedTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    serving_bytes = table.pool_rows * (64 + 2) + table.shared_rows * 64 + 80
    assert serving_bytes <= table.budget_bytes() < serving_bytes + 66


def test_importance_collects_gradient_norms_of_looked_up_ids() -> None:
    table = AdaptEmbedTable(20, 4, 0.5, field_dims=[10, 10])
    ids = torch.tensor([[1, 12], [1, 15]])
    out = table(ids)
    grad = torch.ones(out.shape)
    out.backward(grad)
    expected = torch.zeros(20)
    expected[[1, 12, 15]] = torch.tensor([4.0, 2.0, 2.0])  # ||1_4|| = 2 per lookup
    assert torch.allclose(table.importance, expected)
    table.eval()
    table(ids)  # evaluation adds nothing
    assert torch.allclose(table.importance, expected)


def test_reallocation_moves_rows_to_important_ids_without_changing_vectors() -> None:
    table = AdaptEmbedTable(100, 4, 0.04)  # 64 bytes: one shared row, two own rows with int16 keys
    assert (table.pool_rows, table.shared_rows) == (2, 1)
    ids = torch.arange(100).reshape(50, 2)
    before = table(ids).detach()
    with torch.no_grad():
        table.importance[[7, 42, 3]] = torch.tensor([5.0, 9.0, 1.0])
    table.after_step(table.realloc_every, 100)
    assert sorted((table.slot >= 0).nonzero().flatten().tolist()) == [7, 42]
    assert torch.equal(table(ids), before)  # a new row starts as the shared row it replaces
    with torch.no_grad():
        table.rows += 1.0
        table.importance.zero_()
        table.importance[3] = 1.0
    table.reallocate()
    assert (table.slot >= 0).nonzero().flatten().tolist() == [3]
    assert torch.equal(table.lookup(torch.tensor([7])), table.shared[shared_slot(torch.tensor([7]), 1)])


def test_serving_table_keeps_allocated_ids_and_shared_rows() -> None:
    table = AdaptEmbedTable(100, 4, 0.2)
    with torch.no_grad():
        table.importance[[90, 5, 60]] = 1.0
    table.reallocate()
    with torch.no_grad():
        table.rows.normal_()
    serving = table.finalize()
    assert isinstance(serving, AllocatedRowsTable)
    assert serving.keys.tolist() == [5, 60, 90] and serving.keys.dtype == torch.int16
    ids = torch.arange(100).reshape(25, 4)
    assert torch.equal(serving(ids), table(ids))
    assert serving.memory_bytes() == 3 * (16 + 2) + serving.shared_rows * 16
