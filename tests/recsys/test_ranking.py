"""Full-ranking Recall@k / NDCG@k: a hand-computed example, chunking invariance and bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ranking import evaluate_ranking, hit_metrics
from sparsekit.errors import InputError


def _csr(rows: list[list[int]], num_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), num_items))


def _fixed(scores: np.ndarray):
    table = torch.tensor(scores, dtype=torch.float32)
    return lambda users: table[users]


def test_hand_computed_example() -> None:
    scores = np.array([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # item 0 is a train item: excluded, so the top 3 is 1, 2, 3
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # top 3 is 5, 4, 3
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # no test items: not averaged
    ])
    train = _csr([[0], [], [1]], 6)
    test = _csr([[2, 5], [5, 4, 3, 2], []], 6)
    got = evaluate_ranking(_fixed(scores), train, test, k=3)
    # user 0: one hit (item 2) at rank 2 of 2 test items; IDCG over min(2, 3) = 2 positions
    recall0, ndcg0 = 1 / 2, (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    # user 1: 3 hits at ranks 1-3 of 4 test items; IDCG over min(4, 3) = 3 positions, so NDCG = 1
    recall1, ndcg1 = 3 / 4, 1.0
    assert got.users == 2
    assert got.recall == pytest.approx((recall0 + recall1) / 2)
    assert got.ndcg == pytest.approx((ndcg0 + ndcg1) / 2)


def test_train_items_are_never_counted_as_hits() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    train, test = _csr([[0, 1]], 4), _csr([[3]], 4)
    got = evaluate_ranking(_fixed(scores), train, test, k=2)  # ranking without train items: 2, 3
    assert got.recall == pytest.approx(1.0)
    assert got.ndcg == pytest.approx(1 / math.log2(3))


def test_chunk_size_does_not_change_the_result() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(57, 40))
    train = sp.random(57, 40, density=0.1, format="csr", random_state=1)
    test = sp.random(57, 40, density=0.1, format="csr", random_state=2)
    test = test - test.multiply(train > 0)
    one = evaluate_ranking(_fixed(scores), train, test, k=10, batch_size=1)
    big = evaluate_ranking(_fixed(scores), train, test, k=10, batch_size=1000)
    assert (one.recall, one.ndcg, one.users) == pytest.approx((big.recall, big.ndcg, big.users))
    assert one.users == int((np.diff(test.tocsr().indptr) > 0).sum())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 10_000))
def test_oracle_scores_reach_the_best_possible_values(num_items: int, k: int, seed: int) -> None:
    k = min(k, num_items)
    rng = np.random.default_rng(seed)
    relevant = rng.random((5, num_items)) < 0.4
    relevant[:, 0] = True  # every user has a test item
    oracle = torch.from_numpy(relevant.astype(np.float32))
    top = torch.topk(oracle, k, dim=1).indices
    recall, ndcg = hit_metrics(top, torch.from_numpy(relevant))
    sizes = relevant.sum(1)
    np.testing.assert_allclose(recall.numpy(), np.minimum(sizes, k) / sizes)
    np.testing.assert_allclose(ndcg.numpy(), 1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_metrics_are_within_unit_interval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    relevant = torch.from_numpy(rng.random((6, 15)) < 0.3)
    relevant[:, 3] = True
    top = torch.from_numpy(np.stack([rng.permutation(15)[:5] for _ in range(6)]))
    recall, ndcg = hit_metrics(top, relevant)
    assert bool(((recall >= 0) & (recall <= 1) & (ndcg >= 0) & (ndcg <= 1 + 1e-12)).all())


def test_bad_input_names_the_argument() -> None:
    train, test = _csr([[0]], 3), _csr([[1]], 3)
    with pytest.raises(InputError, match="k"):
        evaluate_ranking(_fixed(np.zeros((1, 3))), train, test, k=4)
    with pytest.raises(InputError, match="test"):
        evaluate_ranking(_fixed(np.zeros((1, 3))), train, _csr([[1]], 4), k=1)


def test_a_scorer_returning_a_shared_view_is_not_written_into() -> None:
    popularity = torch.tensor([4.0, 3.0, 2.0, 1.0])
    train, test = _csr([[0], [1], []], 4), _csr([[1], [0], [2]], 4)
    got = evaluate_ranking(lambda users: popularity.expand(len(users), -1), train, test, k=1)
    # user 0 (train item 0 masked) ranks item 1 first: a hit; user 1 ranks item 0 first: a hit;
    # user 2 ranks item 0 first: a miss. Masking one user's train items must not leak to the others.
    assert got.recall == pytest.approx(2 / 3)
    assert torch.equal(popularity, torch.tensor([4.0, 3.0, 2.0, 1.0]))
