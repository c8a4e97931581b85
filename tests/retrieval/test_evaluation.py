"""IR metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.evaluation import Evaluation, evaluate, paired_difference, run_from_hits


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


def test_mrr_cut_breaks_ties_as_trec_eval_does() -> None:
    """Tied scores across rank 10: the cut keeps trec_eval's top 10 (doc id descending among ties), the
    ones ndcg_cut_10 counts, so MRR@10 and NDCG@10 agree on whether the relevant doc made the top 10."""
    run = {"q": {f"d{i:02d}": 1.0 for i in range(11)}}
    result = evaluate({"q": {"d00": 1}}, run).per_query["q"]  # trec_eval ranks d00 11th
    assert result["ndcg@10"] == 0.0
    assert result["mrr@10"] == 0.0
    assert evaluate({"q": {"d01": 1}}, run).per_query["q"]["mrr@10"] == pytest.approx(0.1)


def test_run_from_hits_and_empty_qrels() -> None:
    assert run_from_hits(["q"], [[("a", 1.5)]]) == {"q": {"a": 1.5}}
    with pytest.raises(ValueError, match="qrels is empty"):
        evaluate({}, {})


def _scores(values: dict[str, float]) -> Evaluation:
    return Evaluation(per_query={q: {"ndcg@10": v} for q, v in values.items()})


def test_paired_difference_is_the_mean_difference_with_a_bootstrap_interval() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 200)
    a = _scores({f"q{i}": float(v + 0.1) for i, v in enumerate(base)})
    b = _scores({f"q{i}": float(v) for i, v in enumerate(base)} | {"only-b": 0.5})
    same = paired_difference(a, b)
    assert same["mean"] == pytest.approx(0.1) and same["ci"] == [pytest.approx(0.1)] * 2
    assert same["queries"] == 200                          # only the common queries are paired
    noisy = _scores({f"q{i}": float(v + rng.normal(0, 0.2)) for i, v in enumerate(base)})
    out = paired_difference(noisy, b, seed=1)
    diff = np.array([noisy.per_query[f"q{i}"]["ndcg@10"] - v for i, v in enumerate(base)])
    assert out["mean"] == pytest.approx(diff.mean(), abs=1e-4)
    low, high = out["ci"]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert low < diff.mean() < high and high - low == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert paired_difference(noisy, b, seed=1) == out      # seeded
    with pytest.raises(ValueError, match="common queries"):
        paired_difference(a, _scores({"x": 1.0}))


def test_judged_queries_names_the_file_at_fault(tmp_path) -> None:
    from retrieval.evaluation import judged_queries
    from sparsekit.errors import InputError

    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "apples"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match=r"test\.tsv: no judgements"):
        judged_queries(tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n")
    with pytest.raises(InputError, match=r"queries\.jsonl: 1 queries judged"):
        judged_queries(tmp_path)
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n')
    qrels, queries = judged_queries(tmp_path, "test")
    assert set(qrels) == {"q1", "q2"} and queries["q2"] == "b"


def test_judged_queries_lists_the_available_splits(tmp_path) -> None:
    from retrieval.evaluation import judged_queries
    from sparsekit.errors import InputError

    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputError, match=r"dev\.tsv: no qrels for split 'dev'; available splits: test"):
        judged_queries(tmp_path, "dev")
