"""BestState keeps the best-scoring weights offered and restores them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsekit.best_state import BestState


def test_keeps_the_best_offer_and_restores_it() -> None:
    layer = nn.Linear(2, 1)
    best = BestState(layer)
    assert not best.found
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assert best.offer(0.5, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    assert best.offer(0.7, 2)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    assert not best.offer(0.7, 3) and not best.offer(math.nan, 4)  # ties and nan never replace it
    best.restore()
    assert torch.all(layer.weight == 2.0) and (best.score, best.step) == (0.7, 2)


def test_restore_without_an_offer_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no state was kept"):
        BestState(nn.Linear(1, 1)).restore()


def test_the_first_offer_is_the_fallback_and_a_number_beats_nan() -> None:
    best = BestState(nn.Linear(1, 1))
    assert best.offer(math.nan, 0) and best.step == 0  # all-NaN dev scores keep the starting point
    assert not best.offer(math.nan, 1)
    assert best.offer(0.1, 2) and best.step == 2      # a real score replaces a NaN one
    assert not best.offer(-math.inf, 3)
