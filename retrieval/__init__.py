"""Retrieval: text -> vectors -> indexes -> ranked results, plus training, evaluation and RAG.

- :mod:`retrieval.index`: the index kinds (BM25 over Lucene, inference-free learned sparse on a native
  inverted index, dense faiss, bi-granular PQ codes + on-disk vectors, hybrid), one registry;
- :mod:`retrieval.engines`: the Lucene / Anserini adapter (pyserini);
- :mod:`retrieval.encoders`: MiniLM backbone, sparse document encoder, IDF query table, dense encoder;
- :mod:`retrieval.losses` and :mod:`retrieval.training`: the sparse encoder's two training stages
  and the dense query encoder's progressive tuning;
- :mod:`retrieval.quantization`: contrastive product quantization;
- :mod:`retrieval.rag`: chunking, generation and the Cache-Craft chunk KV cache;
- :mod:`retrieval.data` (BEIR files), :mod:`retrieval.evaluation` (trec_eval metrics) and
  :mod:`retrieval.query_checks` (what every search call accepts).
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
