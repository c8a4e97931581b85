"""Dev-split evaluation during training: full-corpus exact retrieval from cached hidden states.

Encodes every corpus document with the current model (only the upper layers + head run, from the
frozen-layer cache), scores the dev queries' inference-free vectors against all of them with one
sparse matrix product, and reports NDCG@10 / R@100 / MRR@10 (pytrec_eval) plus the documents'
average non-zeros and FLOPS (expected number of multiply-adds per query-document pair,
``sum_t p_t^2`` over the corpus' term probabilities, as in the FLOPS paper).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from retrieval.encoders.sparse_doc import SparseModel, to_csr
from retrieval.evaluation import Run, evaluate
from retrieval.training.hidden_cache import HiddenCache
from sparsekit.atomic import atomic_path


@torch.no_grad()
def encode_cached(model: SparseModel, hidden: HiddenCache, batch_size: int = 32, progress: bool = True,
                  prior: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """Document vectors [N, V] from the frozen-layer cache (same values as ``model.doc.encode``).

    ``prior``: the corpus' lexical prior rows (``model.doc.lexical_prior_matrix``) when the encoder
    has one.
    """
    parts = []
    n = len(hidden.lengths)
    for start in tqdm(range(0, n, batch_size), desc="dev: encoding corpus", disable=not progress):
        rows = np.arange(start, min(n, start + batch_size))
        h, mask = hidden.batch(rows, model.doc.device)
        weights = model.doc.upper(h, mask)
        if prior is not None:
            rows_prior = torch.from_numpy(prior[rows].toarray()).to(weights.device)
            weights = model.doc.with_prior(weights, rows_prior)
        parts.append(to_csr(weights))
    return sp.vstack(parts, format="csr")


def corpus_flops(docs: sp.csr_matrix) -> float:
    """FLOPS of a document collection: ``sum_t (fraction of documents containing t)^2``."""
    df = np.bincount(docs.indices, minlength=docs.shape[1]) / max(1, docs.shape[0])
    return float(np.sum(df ** 2))


def dev_run(model: SparseModel, docs: sp.csr_matrix, doc_ids: list[str], queries: dict[str, str],
            qids: list[str], k: int = 100) -> Run:
    """Exact full-corpus top-``k`` of ``qids`` (inference-free queries) against document vectors ``docs``."""
    vecs = model.query.encode_batch([queries[q] for q in qids])
    rows = np.repeat(np.arange(len(vecs)), [len(i) for i, _ in vecs])
    cols = np.concatenate([i for i, _ in vecs]) if len(rows) else np.zeros(0, np.int64)
    vals = np.concatenate([v for _, v in vecs]) if len(rows) else np.zeros(0, np.float32)
    q = sp.csr_matrix((vals, (rows, cols)), shape=(len(qids), docs.shape[1]))
    scores = (q @ docs.T).toarray()
    run = {}
    for i, qid in enumerate(qids):
        top = np.argpartition(-scores[i], min(k, scores.shape[1] - 1))[:k]
        run[qid] = {doc_ids[j]: float(scores[i, j]) for j in top if scores[i, j] > 0}
    return run


def evaluate_dev(model: SparseModel, docs: sp.csr_matrix, doc_ids: list[str], queries: dict[str, str],
                 qrels: dict[str, dict[str, int]], qids: list[str], k: int = 100) -> dict[str, float]:
    """Exact full-corpus retrieval metrics of ``qids`` with document vectors ``docs``."""
    means = evaluate({q: qrels[q] for q in qids}, dev_run(model, docs, doc_ids, queries, qids, k)).means
    nnz = docs.getnnz(axis=1)
    return {**means, "avg_doc_nnz": float(nnz.mean()), "flops": corpus_flops(docs)}


def document_cache(model_dir: Path, contents: list[str], work: Path) -> Path:
    """Where the corpus vectors of the model artifact at ``model_dir`` are cached in ``work`` (keyed by
    the artifact's file checksums and the corpus)."""
    files = json.loads((Path(model_dir) / "manifest.json").read_text())["files"]
    digest = hashlib.sha256(json.dumps([files, len(contents)]).encode())
    for text in contents:
        digest.update(json.dumps(text).encode())
    return Path(work) / f"docs-{digest.hexdigest()[:16]}.npz"


def save_documents(path: Path, docs: sp.csr_matrix) -> None:
    """Write ``docs`` to ``path`` atomically: a killed run leaves no half-written cache."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: save_npz would append .npz
        sp.save_npz(fh, docs)
