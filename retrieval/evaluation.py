"""IR evaluation: NDCG@10, Recall@100 and MRR@10 through pytrec_eval (trec_eval semantics).

Means are taken over every query that has relevance judgements; a judged query the run does not
answer scores 0 on every metric (pytrec_eval alone would silently drop it). MRR@10 is trec_eval's
``recip_rank`` on the run cut to its top 10, in trec_eval's order (score descending, ties by document
id descending), so the cut keeps the documents ``ndcg_cut_10`` counts. :func:`paired_difference`
gives the mean per-query difference between two systems with a bootstrap confidence interval over
the queries (Sakai 2006, "Evaluating evaluation metrics based on the bootstrap"; scipy's BCa bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytrec_eval

from sparsekit.errors import InputError

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

METRICS = ("ndcg@10", "recall@100", "mrr@10")
_TREC = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "mrr@10": "recip_rank"}


@dataclass
class Evaluation:
    """Per-query metric values and their means over the judged queries."""

    per_query: dict[str, dict[str, float]]
    means: dict[str, float] = field(default_factory=dict)
    num_queries: int = 0


def _top(run: Run, k: int) -> Run:
    """Each query's top ``k`` in trec_eval's ranking: score descending, ties by doc id descending."""
    out = {}
    for qid, scores in run.items():
        by_id = sorted(scores.items(), reverse=True)  # doc id descending ...
        ranked = sorted(by_id, key=lambda kv: -kv[1])[:k]  # ... kept within equal scores (stable sort)
        out[qid] = dict(ranked)
    return out


def _trec_eval(qrels: Qrels, run: Run, measure: str) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
    result = evaluator.evaluate({q: run.get(q, {}) for q in qrels if run.get(q)})
    return {qid: result.get(qid, {}).get(measure, 0.0) for qid in qrels}


def evaluate(qrels: Qrels, run: Run) -> Evaluation:
    """Score ``run`` (qid -> docid -> score) against ``qrels`` (qid -> docid -> grade)."""
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate")
    per_query: dict[str, dict[str, float]] = {qid: {} for qid in qrels}
    for name in METRICS:
        source = _top(run, 10) if name == "mrr@10" else run
        values = _trec_eval(qrels, source, _TREC[name])
        for qid, value in values.items():
            per_query[qid][name] = float(value)
    n = len(qrels)
    means = {name: sum(per_query[q][name] for q in qrels) / n for name in METRICS}
    return Evaluation(per_query=per_query, means=means, num_queries=n)


def run_from_hits(qids: list[str], hits: list[list[tuple[str, float]]]) -> Run:
    """Build a run dict from per-query ranked ``(doc_id, score)`` lists."""
    return {qid: {doc: float(score) for doc, score in ranked} for qid, ranked in zip(qids, hits, strict=True)}


def paired_difference(a: Evaluation, b: Evaluation, metric: str = "ndcg@10", confidence: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> dict[str, float | list[float]]:
    """Mean of ``a - b`` over the queries both judged, with a paired bootstrap ``confidence`` interval."""
    from scipy.stats import bootstrap

    qids = sorted(set(a.per_query) & set(b.per_query))
    if len(qids) < 2:
        raise ValueError(f"paired_difference needs at least 2 common queries, got {len(qids)}")
    diff = np.array([a.per_query[q][metric] - b.per_query[q][metric] for q in qids])
    low = high = float(diff[0])
    if not np.allclose(diff, diff[0]):  # a constant difference has no spread to resample
        ci = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples, method="BCa",
                       random_state=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"mean": round(float(diff.mean()), 4), "ci": [round(low, 4), round(high, 4)],
            "confidence": confidence, "queries": len(qids)}


def judged_queries(data: str | Path, split: str = "test") -> tuple[Qrels, dict[str, str]]:
    """The qrels of a BEIR folder's ``split`` and its queries, checked to fit together: a qrels file with
    no judgements, or judged queries missing from ``queries.jsonl``, is an :class:`InputError` naming the
    file at fault."""
    from retrieval.data.beir import available_splits, load_qrels, load_queries

    qrels_path, queries_path = Path(data) / "qrels" / f"{split}.tsv", Path(data) / "queries.jsonl"
    if Path(data).is_dir() and not qrels_path.is_file():
        splits = ", ".join(available_splits(data)) or "none"
        raise InputError(qrels_path, f"no qrels for split {split!r}; available splits: {splits}")
    qrels = load_qrels(qrels_path)
    if not qrels:
        raise InputError(qrels_path, "no judgements below the header: nothing to evaluate")
    queries = load_queries(queries_path)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise InputError(queries_path, f"{len(missing)} queries judged in {qrels_path} are absent, e.g. "
                                       f"{missing[:3]}")
    return qrels, queries
