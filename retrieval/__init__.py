"""Retrieval: text -> vectors -> indexes -> ranked results, plus training and evaluation.

Index kinds live in :mod:`retrieval.index` (BM25 over Lucene today; learned sparse, dense,
bi-granular and hybrid plug in beside it), engines in :mod:`retrieval.engines`, dataset loaders in
:mod:`retrieval.data` and metrics in :mod:`retrieval.evaluation`.
"""
