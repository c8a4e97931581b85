"""PEP: the soft-threshold reparameterisation, threshold granularities and pruning to the budget."""

from __future__ import annotations

import pytest
import torch

from embeddings.pep import PEPTable
from sparsekit.errors import InputError


@pytest.mark.parametrize(
    ("granularity", "shape"),
    [("global", (1, 1)), ("dimension", (1, 8)), ("feature", (50, 1)), ("feature_dimension", (50, 8))],
)
def test_soft_threshold_at_every_granularity(granularity: str, shape: tuple[int, int]) -> None:
    table = PEPTable(50, 8, 0.5, granularity=granularity, threshold_init=-2.0)
    assert tuple(table.threshold.shape) == shape
    with torch.no_grad():
        table.weight.normal_(std=0.3)
        table.threshold.normal_(mean=-2.0)
    ids = torch.tensor([[3, 7], [49, 0]])
    v = table.weight[ids]
    g = torch.sigmoid(table.threshold if shape[0] == 1 else table.threshold[ids])
    assert torch.allclose(table(ids), v.sign() * torch.relu(v.abs() - g))
    table(ids).sum().backward()
    assert table.threshold.grad is not None and bool(table.threshold.grad.any())


def test_prune_keeps_learned_zeros_and_at_most_the_budget() -> None:
    torch.manual_seed(0)
    table = PEPTable(100, 8, 0.1, threshold_init=-3.0, search_fraction=0.5)
    with torch.no_grad():
        table.weight.normal_(std=0.1)
    learned_zeros = table._soft_threshold(table.weight, None) == 0
    assert 0.0 < table.learned_sparsity() < 1.0
    table.after_step(4, 10)
    assert not bool(table.pruned)
    table.after_step(5, 10)
    assert bool(table.pruned) and int(table.mask.sum()) <= table.max_nnz
    assert not bool(table.mask[learned_zeros].any())
    ids = torch.arange(100).reshape(25, 4)
    assert torch.equal(table(ids), table.weight[ids] * table.mask[ids])
    assert torch.equal(table.finalize().to_dense(), table.weight.detach() * table.mask)


def test_sparser_than_the_budget_keeps_every_learned_weight() -> None:
    torch.manual_seed(0)
    table = PEPTable(100, 8, 0.5, threshold_init=-3.0)  # g(s) = 0.047
    with torch.no_grad():
        table.weight.normal_(std=0.03)
    nonzero = int((table._soft_threshold(table.weight, None) != 0).sum())
    assert nonzero < table.max_nnz
    assert table.finalize().nnz == nonzero


def test_unknown_granularity() -> None:
    with pytest.raises(InputError):
        PEPTable(10, 4, granularity="row")
