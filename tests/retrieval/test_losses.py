"""Losses for inference-free learned sparse retrieval, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.losses import (
    FlopsWarmup,
    ensemble_kd_loss,
    ensemble_teacher_scores,
    flops_loss,
    idf_aware_candidate_scores,
    idf_aware_scores,
    margin_mse_loss,
    minmax_normalize,
    plain_candidate_scores,
    plain_scores,
)

# ---- FLOPS ---------------------------------------------------------------------------------------


def test_flops_loss_hand_computed() -> None:
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 4.0]])
    # column means of |w|: [2, 1, 2] -> 4 + 1 + 4
    assert flops_loss(w).item() == pytest.approx(9.0)


def test_flops_loss_penalises_shared_terms_more_than_l1() -> None:
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # same L1 mass, different columns
    shared = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both documents use term 0
    assert flops_loss(spread).item() == pytest.approx(0.5)
    assert flops_loss(shared).item() == pytest.approx(1.0)


def test_flops_loss_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        flops_loss(torch.ones(3))


def test_flops_warmup_is_quadratic_then_flat() -> None:
    warm = FlopsWarmup(lambda_max=0.08, warmup_steps=4)
    assert [warm(s) for s in (0, 1, 2, 3, 4, 10)] == pytest.approx(
        [0.0, 0.08 / 16, 0.08 / 4, 0.08 * 9 / 16, 0.08, 0.08])
    assert FlopsWarmup(0.002, 200)(100) == pytest.approx(0.0005)
    assert FlopsWarmup(0.5, 0)(0) == 0.5
    with pytest.raises(ValueError):
        FlopsWarmup(-1.0, 10)


# ---- IDF-aware matching --------------------------------------------------------------------------

BOW = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
IDF = torch.tensor([2.0, -1.0, 0.5])  # relu -> [2, 0, 0.5]
DOCS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 1.0]])


def test_idf_aware_scores_hand_computed() -> None:
    expected = torch.tensor([[2 * 1 + 0.5 * 3, 2 * 4 + 0.5 * 1], [0.0, 0.0]])
    assert torch.allclose(idf_aware_scores(BOW, IDF, DOCS), expected)


def test_plain_scores_hand_computed() -> None:
    expected = torch.tensor([[1 + 3, 4 + 1], [2.0, 0.0]])
    assert torch.allclose(plain_scores(BOW, DOCS), expected)


def test_candidate_scores_match_in_batch_scores_per_query() -> None:
    docs = torch.rand(2, 4, 3)
    got = idf_aware_candidate_scores(BOW, IDF, docs)
    for b in range(2):
        assert torch.allclose(got[b], idf_aware_scores(BOW[b:b + 1], IDF, docs[b])[0])
    assert torch.allclose(plain_candidate_scores(BOW, docs), torch.einsum("bv,bcv->bc", BOW, docs))


def test_idf_scales_the_gradient_on_each_document_weight() -> None:
    docs = DOCS.clone().requires_grad_(True)
    query = torch.ones(1, 3)
    idf_aware_scores(query, IDF, docs).sum().backward()
    assert torch.allclose(docs.grad, torch.tensor([[2.0, 0.0, 0.5]] * 2))  # relu(idf) per token
    docs.grad = None
    plain_scores(query, docs).sum().backward()
    assert torch.allclose(docs.grad, torch.ones(2, 3))  # ablation: every token alike


def test_idf_aware_ranking_plus_flops_drives_low_idf_terms_to_zero() -> None:
    w = torch.tensor([[1.0, 1.0]], requires_grad=True)  # one doc, a rare and a common term
    idf = torch.tensor([5.0, 0.1])
    optim = torch.optim.SGD([w], lr=0.05)
    for _ in range(60):
        optim.zero_grad()
        loss = -idf_aware_scores(torch.ones(1, 2), idf, w).sum() + 1.0 * flops_loss(w)
        loss.backward()
        optim.step()
        with torch.no_grad():
            w.clamp_(min=0.0)  # weights are log(1 + relu(.)) >= 0
    assert w[0, 0].item() > 1.0  # high IDF: the ranking gradient (x5) beats FLOPS
    assert w[0, 1].item() < 0.1  # low IDF: FLOPS wins, the term is driven to zero


def test_matching_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        idf_aware_scores(BOW, torch.ones(4), DOCS)
    with pytest.raises(ValueError):
        plain_candidate_scores(BOW, torch.ones(3, 2, 3))


# ---- ensemble distillation -----------------------------------------------------------------------


def test_minmax_normalize_per_row_and_constant_rows() -> None:
    got = minmax_normalize(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [-4.0, 0.0, -2.0]]))
    assert torch.allclose(got, torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.5]]))


def test_minmax_normalize_ignores_padding() -> None:
    """Padded columns (not candidates) set neither the min nor the max of their row and come out 0."""
    scores = torch.tensor([[0.4, 0.6, 0.8, 0.0], [2.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    got = minmax_normalize(scores, valid)
    assert torch.allclose(got, torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    target = ensemble_teacher_scores([scores, scores], scale=30.0, valid=valid)
    assert torch.allclose(target, 30.0 * got)
    with pytest.raises(ValueError, match="valid has shape"):
        minmax_normalize(scores, valid[:, :2])


def test_ensemble_teacher_scores_hand_computed() -> None:
    dense = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    bm25 = torch.tensor([[10.0, 30.0, 20.0], [0.0, 1.0, 2.0]])
    # minmax: [[0, .5, 1], [0, 0, 0]] and [[0, 1, .5], [0, .5, 1]]; mean x 30
    expected = torch.tensor([[0.0, 22.5, 22.5], [0.0, 7.5, 15.0]])
    assert torch.allclose(ensemble_teacher_scores([dense, bm25]), expected)
    assert torch.allclose(ensemble_teacher_scores([dense, bm25], scale=1.0), expected / 30)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), min_size=1, max_size=4),
       st.floats(0.1, 100.0))
def test_ensemble_targets_are_finite_and_within_scale(rows: list[list[float]], scale: float) -> None:
    teacher = torch.tensor(rows, dtype=torch.float64)
    target = ensemble_teacher_scores([teacher, -teacher], scale=scale)
    assert torch.isfinite(target).all()
    assert target.min() >= 0 and target.max() <= scale * (1 + 1e-6)
    loss = ensemble_kd_loss(torch.zeros_like(target), target)
    assert torch.isfinite(loss) and loss >= -1e-6  # KL >= 0 up to float32 rounding (targets are float32)


def test_ensemble_teacher_scores_validates_input() -> None:
    with pytest.raises(ValueError):
        ensemble_teacher_scores([])
    with pytest.raises(ValueError):
        ensemble_teacher_scores([torch.ones(2, 3), torch.ones(2, 4)])


def test_ensemble_kd_loss_hand_computed() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # softmax [.75, .25]; row 2 equal
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert ensemble_kd_loss(student, teacher).item() == pytest.approx(kl_row0 / 2, rel=1e-5)


def test_ensemble_kd_with_constant_teacher_rows_has_no_nan() -> None:
    student = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    teacher = ensemble_teacher_scores([torch.full((1, 3), 7.0), torch.full((1, 3), -2.0)])
    assert torch.equal(teacher, torch.zeros(1, 3))
    loss = ensemble_kd_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert loss.item() > 0  # uniform target, non-uniform student


def test_ensemble_kd_loss_is_zero_iff_distributions_match_and_trains_student_only() -> None:
    teacher = torch.tensor([[3.0, 1.0, 0.0]], requires_grad=True)
    student = (teacher.detach() + 5.0).requires_grad_(True)  # shift-invariant softmax
    loss = ensemble_kd_loss(student, teacher)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert teacher.grad is None


# ---- MarginMSE -----------------------------------------------------------------------------------


def test_margin_mse_hand_computed() -> None:
    loss = margin_mse_loss(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0]),
                           torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    # student margins [2, 0], teacher margins [1, -2] -> errors [1, 2] -> (1 + 4) / 2
    assert loss.item() == pytest.approx(2.5)


def test_margin_mse_broadcasts_positives_over_negatives() -> None:
    s_pos, t_pos = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    s_neg, t_neg = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]])
    # student margins [2, 1], teacher margins [1, 1] -> errors [1, 0]
    assert margin_mse_loss(s_pos, s_neg, t_pos, t_neg).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        margin_mse_loss(torch.ones(2), torch.ones(2), torch.ones(3), torch.ones(3))


def test_margin_mse_is_shift_invariant_and_detaches_the_teacher() -> None:
    t_pos = torch.tensor([4.0], requires_grad=True)
    s_pos = torch.tensor([10.0], requires_grad=True)
    loss = margin_mse_loss(s_pos, torch.tensor([9.0]), t_pos, torch.tensor([3.0]))
    assert loss.item() == pytest.approx(0.0)
    loss.backward()
    assert t_pos.grad is None and s_pos.grad is not None
