"""Cache-Craft's CCI / beta / gamma / CFO formula and token choice."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from retrieval.rag.reuse_score import (
    ChunkAttention,
    cci,
    cfo,
    densities,
    kendall_tau_distance,
    prefix_overlap,
    tokens_to_recompute,
)


def _stats(inter=0.2, intra=0.4, mass=None, prefix=("a", "b")) -> ChunkAttention:
    return ChunkAttention(inter, intra, mass if mass is not None else {"a": 3.0, "b": 1.0}, tuple(prefix))


def test_cci_is_sigmoid_of_the_density_ratio() -> None:
    assert cci(_stats(0.2, 0.4)) == 1 / (1 + math.exp(-0.5))
    assert cci(_stats(0.0, 0.4)) == 0.5
    assert cci(_stats(0.3, 0.0)) == 1.0


def test_densities_are_length_normalised() -> None:
    inter, intra = torch.full((4,), 0.5), torch.full((4,), 0.25)
    assert densities(inter, intra, prefix_tokens=10) == (2.0 / 40, 1.0 / 10)
    assert densities(inter, intra, prefix_tokens=0)[0] == 0.0


def test_beta_edge_cases() -> None:
    stats = _stats()
    assert prefix_overlap(stats, ["a", "b"]) == 1.0
    assert prefix_overlap(stats, ["b", "a"]) == 1.0  # order is gamma's business
    assert prefix_overlap(stats, ["a", "b", "z"]) == 2 / 3  # z was never attended to
    assert prefix_overlap(stats, ["b"]) == 0.25
    assert prefix_overlap(stats, ["x"]) == 0.0
    assert prefix_overlap(stats, []) == 0.0
    no_context = _stats(mass={}, prefix=())
    assert prefix_overlap(no_context, []) == 1.0  # computed first, reused first: same context
    assert prefix_overlap(no_context, ["a"]) == 0.0


def test_gamma_is_the_normalised_kendall_tau_distance() -> None:
    assert kendall_tau_distance(["a", "b", "c"], ["a", "b", "c"]) == 0.0
    assert kendall_tau_distance(["a", "b", "c"], ["c", "b", "a"]) == 1.0
    assert kendall_tau_distance(["a", "b", "c"], ["b", "a", "c"]) == 1 / 3
    assert kendall_tau_distance(["a", "b"], ["x", "b", "y"]) == 0.0  # fewer than two shared
    assert kendall_tau_distance(["a", "b", "q"], ["z", "b", "a"]) == 1.0  # only shared chunks count


def test_cfo_formula_and_clamping() -> None:
    stats = _stats()
    assert cfo(stats, ["a", "b"], alpha=1.0) == 0.0  # same prefix, same order
    full_change = cci(stats)
    assert math.isclose(cfo(stats, ["x"], alpha=1.0), full_change)
    assert math.isclose(cfo(stats, ["b", "a"], alpha=1.0), full_change)  # all shared, order reversed
    assert math.isclose(cfo(stats, ["b"], alpha=0.5), 0.5 * full_change * (1 - 0.25))
    assert math.isclose(cfo(stats, ["a", "z", "b"], alpha=1.0), full_change * (1 - 2 / 3))
    assert cfo(stats, ["x"], alpha=10.0) == 1.0


@given(st.lists(st.sampled_from("abcdef"), max_size=6, unique=True),
       st.lists(st.sampled_from("abcdef"), max_size=6, unique=True),
       st.floats(0, 5), st.floats(0, 1), st.floats(0.01, 1))
def test_cfo_is_a_fraction(old, new, alpha, inter, intra) -> None:
    stats = ChunkAttention(inter, intra, {c: 1.0 for c in old}, tuple(old))
    assert 0.0 <= cfo(stats, new, alpha) <= 1.0
    assert 0.0 <= kendall_tau_distance(old, new) <= 1.0


def test_tokens_to_recompute_takes_the_top_inter_attention_ceil() -> None:
    inter = torch.tensor([0.1, 0.9, 0.0, 0.5, 0.5])
    assert tokens_to_recompute(inter, 0.5).tolist() == [1, 3, 4]  # ceil(2.5) = 3
    assert tokens_to_recompute(inter, 0.0).numel() == 0
    assert tokens_to_recompute(torch.zeros(4), 0.5).tolist() == [0, 1]  # ties: earlier tokens first
    assert tokens_to_recompute(inter, 1.0).tolist() == [0, 1, 2, 3, 4]
