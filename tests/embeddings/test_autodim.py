"""AutoDim: candidate widths per field, Gumbel-softmax mixture, budget-constrained fixing, MDE serving."""

from __future__ import annotations

import torch

from embeddings.autodim import AutoDimTable, default_candidates
from embeddings.mde import MixedDimTable, block_bytes

FRAPPE_FIELDS = [957, 4082, 7, 7, 2, 3, 2, 9, 80, 233]


def _cost(table: AutoDimTable) -> int:
    chosen = zip(table.sizes, table.choice.tolist(), strict=True)
    return sum(block_bytes(n, table.candidates[k], table.dim) for n, k in chosen)


def test_candidates_exclude_unaffordable_and_dominated_widths() -> None:
    assert default_candidates(16) == (1, 2, 4, 8, 16)
    table = AutoDimTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    widths = [[table.candidates[k] for k in allowed] for allowed in table.allowed]
    assert widths[1] == [1]  # the item field cannot afford 2 dims at 10%
    assert widths[4] == [1, 16]  # 2 rows: a projected width >= 2 costs more than the full block


def test_mixture_weights_and_fixing_after_the_search() -> None:
    table = AutoDimTable(5382, 16, 0.5, field_dims=FRAPPE_FIELDS, search_fraction=0.5)
    weights = table.mixture_weights()
    assert torch.allclose(weights.sum(1), torch.ones(10))
    assert bool((weights[1, -1] == 0).all())  # the masked width-16 candidate of the item field
    table.after_step(4, 10)
    assert not table.fixed and table.temperature < 1.0
    table.after_step(5, 10)
    assert table.fixed
    assert torch.equal(table.mixture_weights(), torch.nn.functional.one_hot(table.choice, 5).float())


def test_fix_takes_the_argmax_when_it_fits_and_downgrades_otherwise() -> None:
    roomy = AutoDimTable(100, 8, 1.0, field_dims=[60, 40])
    with torch.no_grad():
        roomy.arch[:, 2] = 5.0  # width 4 everywhere
    roomy.fix()
    assert roomy.choice.tolist() == [2, 2]
    tight = AutoDimTable(5382, 16, 0.1, field_dims=FRAPPE_FIELDS)
    with torch.no_grad():
        tight.arch.copy_(torch.arange(5.0).expand(10, 5))  # prefers the widest allowed everywhere
    tight.fix()
    assert _cost(tight) <= tight.available
    assert tight.choice[4] == 4  # cheap full-width field kept at its argmax


def test_finalize_serves_the_chosen_candidates() -> None:
    table = AutoDimTable(100, 8, 0.5, field_dims=[60, 40])
    ids = torch.tensor([[0, 60], [59, 99], [3, 70]])
    table.after_step(1, 1)
    table.eval()
    serving = table.finalize()
    assert isinstance(serving, MixedDimTable)
    assert list(serving.dims) == [table.candidates[int(k)] for k in table.choice]
    assert torch.allclose(serving(ids), table(ids))
