"""DeepLight: the damping sparsity schedule and gradual magnitude pruning to the budget's weight count."""

from __future__ import annotations

import torch

from embeddings.csr_rows import SparseRowsTable
from embeddings.deeplight import DeepLightTable

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


def test_schedule_rises_to_the_budget_sparsity_at_the_end_of_the_ramp() -> None:
    table = DeepLightTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS, ramp_fraction=0.5)
    assert table.max_nnz == 4719 and table.layout == "csr"
    levels = [table.sparsity_at(step, 100) for step in range(0, 101, 5)]
    assert levels[0] == 0.0 and levels == sorted(levels)
    assert table.sparsity_at(49, 100) >= 0.98 * table.final_sparsity
    assert table.sparsity_at(50, 100) == table.sparsity_at(100, 100) == table.final_sparsity


def test_pruning_during_training_keeps_masked_weights_at_zero() -> None:
    table = DeepLightTable(200, 8, 0.1, ramp_fraction=0.5, prune_every=2)
    optim = torch.optim.Adam(table.parameters(), lr=1e-2)
    ids = torch.arange(200).reshape(50, 4)
    kept = []
    for step in range(1, 11):
        loss = (table(ids) - 1.0).pow(2).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
        table.after_step(step, 10)
        kept.append(int(table.mask.sum()))
        assert not bool(table.weight[~table.mask].any())
    assert kept == sorted(kept, reverse=True) and kept[-1] == table.max_nnz
    serving = table.finalize()
    assert isinstance(serving, SparseRowsTable) and serving.nnz == table.max_nnz
    assert torch.equal(serving.to_dense(), table.weight.detach() * table.mask)
