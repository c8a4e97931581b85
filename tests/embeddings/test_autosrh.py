"""AutoSrh: per-(group, dimension) saliencies, their L1 penalty, and salience pruning to the budget."""

from __future__ import annotations

import pytest
import torch

from embeddings.autosrh import AutoSrhTable


def test_saliency_scales_each_group_dimension() -> None:
    table = AutoSrhTable(30, 4, 0.5, field_dims=[10, 20], l1=0.01)
    with torch.no_grad():
        table.saliency.copy_(torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.5, 0.5, 0.5, 0.0]]))
    ids = torch.tensor([[2, 15]])
    out = table(ids)
    assert torch.equal(out[0, 0], table.weight[2] * table.saliency[0])
    assert torch.equal(out[0, 1], table.weight[15] * table.saliency[1])
    assert table.penalty().item() == pytest.approx(0.01 * 5.5)


def test_prune_folds_saliency_and_keeps_the_most_salient() -> None:
    table = AutoSrhTable(60, 4, 0.2, blocks=[30, 30], search_fraction=0.5)
    with torch.no_grad():
        table.weight.uniform_(0.5, 1.0)
        table.saliency.copy_(torch.tensor([[3.0, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]]))
    ids = torch.arange(60).reshape(30, 2)
    salient = table(ids).detach()
    table.after_step(5, 10)
    assert bool(table.pruned) and table.penalty() is None
    assert int(table.mask.sum()) == table.max_nnz
    assert bool(table.mask[:30, 0].all())  # the salient dimension of the first group survives
    assert torch.equal(table(ids), salient * table.mask[ids])
    assert table.finalize().nnz == table.max_nnz
