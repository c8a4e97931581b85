"""Dataset loaders for retrieval: the BEIR file layout (:mod:`retrieval.data.beir`)."""

from retrieval.data.beir import (
    BeirDataset,
    Doc,
    iter_corpus,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)

__all__ = ["BeirDataset", "Doc", "iter_corpus", "load_beir", "load_corpus", "load_qrels", "load_queries"]
