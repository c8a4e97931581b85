"""IR metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from retrieval.evaluation import evaluate, run_from_hits


def test_hand_computed_metrics() -> None:
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"z": 1}}
    run = {"q1": {"b": 3.0, "a": 2.0, "c": 1.0}, "q2": {"y": 1.0}}
    result = evaluate(qrels, run)
    # q1: relevant at ranks 2 and 3; ideal DCG = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert result.per_query["q1"]["ndcg@10"] == pytest.approx(dcg / idcg)
    assert result.per_query["q1"]["recall@100"] == 1.0
    assert result.per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    assert result.per_query["q2"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert result.means["mrr@10"] == pytest.approx(0.25)
    assert result.num_queries == 2


def test_unanswered_judged_query_counts_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    result = evaluate(qrels, {"q1": {"a": 1.0}})
    assert result.means["ndcg@10"] == pytest.approx(0.5)


def test_mrr_is_cut_at_10() -> None:
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    assert evaluate({"q": {"d15": 1}}, run).per_query["q"]["mrr@10"] == 0.0
    assert evaluate({"q": {"d9": 1}}, run).per_query["q"]["mrr@10"] == pytest.approx(0.1)


def test_run_from_hits_and_empty_qrels() -> None:
    assert run_from_hits(["q"], [[("a", 1.5)]]) == {"q": {"a": 1.5}}
    with pytest.raises(ValueError, match="qrels is empty"):
        evaluate({}, {})
