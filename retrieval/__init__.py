"""Retrieval: text -> vectors -> indexes -> ranked results, plus training and evaluation.

Index kinds live in :mod:`retrieval.index` (BM25 over Lucene today; learned sparse, dense,
bi-granular and hybrid plug in beside it), engines in :mod:`retrieval.engines`, dataset loaders in
:mod:`retrieval.data` and metrics in :mod:`retrieval.evaluation`.
"""

from typing import Any


def train_sparse_encoder(config: Any) -> Any:
    """Train the inference-free sparse encoder; see :mod:`retrieval.training.sparse`."""
    from retrieval.training.sparse import train_sparse_encoder as train

    return train(config)


def build_index(kind: str, corpus: Any, out: Any, **params: Any) -> Any:
    """Build an index of ``kind``; see :func:`retrieval.index.build_index`."""
    from retrieval.index import build_index as build

    return build(kind, corpus, out, **params)
