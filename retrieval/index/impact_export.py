"""Export a learned-sparse index to a Lucene impact index (pyserini), and search it.

The same document vectors as the native engine, served by Lucene: each document's term weights
become integer impacts ``round(w * scale)`` in an Anserini ``JsonVectorCollection`` indexed with
``-impact -pretokenized`` (WordPiece tokens as terms); a query's table weights are scaled and
rounded the same way (pyserini requires integer impacts, ../shared/docs/DESIGN.md §5), so Lucene scores are
``scale^2`` times the native scores up to rounding and both engines return the same top-10 up to
ties and rounding. Artifact format ``learned-sparse-lucene`` v1: ``lucene/`` + ``query/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from retrieval.encoders.backbone import load_fast_tokenizer
from retrieval.encoders.idf_query import IdfQueryEncoder
from retrieval.engines.impacts import MAX_IMPACT
from retrieval.index.learned_sparse import LearnedSparseIndex
from retrieval.query_checks import check_sparse_query, check_text, check_texts
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.errors import InputError

if TYPE_CHECKING:  # pyserini / the JVM load only when an index is opened
    from retrieval.engines.lucene import ImpactSearcher

FORMAT = "learned-sparse-lucene"
VERSION = 1


def document_vectors(index: LearnedSparseIndex) -> sp.csr_matrix:
    """The (de-quantized) document-term matrix [num_docs, vocab] held by a learned-sparse index."""
    post = index.postings.postings
    weights = np.asarray(post.weights, dtype=np.float32) * np.float32(index.postings.scale)
    csc = sp.csc_matrix((weights, np.asarray(post.docs), np.asarray(post.offsets)),
                        shape=(index.num_docs, index.postings.vocab_size))
    return csc.tocsr()


def _impact_docs(index: LearnedSparseIndex, vocab: list[str], scale: float
                 ) -> Iterator[tuple[str, dict[str, int]]]:
    csr = document_vectors(index)
    ids = index.postings.doc_ids
    for row in range(csr.shape[0]):
        lo, hi = csr.indptr[row], csr.indptr[row + 1]
        impacts = np.rint(csr.data[lo:hi] * scale).astype(np.int64)
        yield str(ids[row]), {vocab[t]: int(w) for t, w in zip(csr.indices[lo:hi], impacts, strict=True)
                               if w > 0}


def export_impact_index(learned: str | Path, out: str | Path, scale: float = 100.0, threads: int = 2,
                        overwrite: bool = False) -> Path:
    """Write a ``learned-sparse-lucene`` index holding the vectors of the ``learned-sparse`` index."""
    from retrieval.engines.anserini import build_impact_index

    learned = Path(learned)
    index = LearnedSparseIndex.open(learned)
    vocab = _vocabulary(learned / "query" / "tokenizer")
    with write_artifact(out, FORMAT, VERSION, params={"scale": scale, "learned": str(learned)},
                        overwrite=overwrite) as writer:
        stats = build_impact_index(_impact_docs(index, vocab, scale), writer.path("lucene"), threads=threads)
        shutil.copytree(learned / "query", writer.path("query"))
        writer.counts.update(num_docs=index.num_docs, indexed=int(stats.indexed))
    return Path(out)


def _vocabulary(tokenizer_dir: Path) -> list[str]:
    tok = load_fast_tokenizer(tokenizer_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    return [by_id[i] for i in range(len(by_id))]


class LuceneImpactIndex:
    """Learned-sparse search on Lucene: the stored query table, integer impacts, LuceneImpactSearcher."""

    kind = "sparse"

    def __init__(self, path: Path, searcher: ImpactSearcher, query: IdfQueryEncoder, scale: float,
                 num_docs: int) -> None:
        self.path, self.searcher, self.query = path, searcher, query
        self.scale, self._num_docs = scale, num_docs
        self.vocab = _vocabulary(path / "query" / "tokenizer")

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> LuceneImpactIndex:
        from retrieval.engines.lucene import ImpactSearcher

        path = Path(path)
        manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
        query = IdfQueryEncoder.read(path / "query", load_fast_tokenizer(path / "query" / "tokenizer"))
        return cls(path, ImpactSearcher(path / "lucene"), query, float(manifest.params["scale"]),
                   int(manifest.counts["num_docs"]))

    @property
    def num_docs(self) -> int:
        return self._num_docs

    def _weights(self, indices: np.ndarray, values: np.ndarray) -> dict[str, int]:
        """Integer impacts ``rint(w * scale)`` by token; a repeated id adds up, as in the native engine.
        Lucene stores impacts as 32-bit term frequencies: a larger one is an error naming the weight."""
        terms, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        sums = np.bincount(inverse, weights=np.asarray(values, dtype=np.float64), minlength=len(terms))
        ints = np.rint(sums * self.scale)
        if ints.size and ints.max() > MAX_IMPACT:
            j = int(np.argmax(ints))
            raise InputError("query.values", f"weight {float(sums[j])!r} of term {int(terms[j])} is beyond "
                                             f"Lucene's integer impacts (at most {MAX_IMPACT} / scale "
                                             f"{self.scale:g})")
        return {self.vocab[t]: int(w) for t, w in zip(terms, ints, strict=True) if w > 0}

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        weights = self._weights(*self.query.encode(check_text(text)))
        return self.searcher.search(weights, k) if weights else []

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
        """:meth:`search` of each text, run on ``threads`` Java threads (a query with no positive impact
        gets no hits)."""
        weights = [self._weights(*self.query.encode(t)) for t in check_texts(texts)]
        live = [str(i) for i, w in enumerate(weights) if w]
        hits = self.searcher.batch_search([weights[int(i)] for i in live], live, k, threads) if live else {}
        return [hits.get(str(i), []) for i in range(len(weights))]

    def search_sparse(self, indices: list[int], values: list[float], k: int) -> list[tuple[str, float]]:
        """Top-``k`` of a sparse query over the query tokenizer's vocabulary (ids + non-negative weights);
        :class:`InputError` naming ``query.indices[j]`` / ``query.values[j]`` of a bad entry."""
        weights = self._weights(*check_sparse_query(indices, values, len(self.vocab)))
        return self.searcher.search(weights, k) if weights else []

    def close(self) -> None:
        self.searcher.close()
