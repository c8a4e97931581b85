"""The learned-sparse index kind: inference-free query table + native inverted index of documents.

Geng et al. (2024) inference-free retrieval, served: documents are encoded once at index time by a
trained :class:`~retrieval.encoders.sparse_doc.SparseModel` (streamed in batches, progress bar,
optional top-k / threshold pruning), their vectors go into a ``sparse-inverted`` index
(:mod:`retrieval.index.inverted`), and the query side (tokenizer + IDF weight table, no model) is
copied beside it. At query time: tokenize -> table lookup -> exact top-k on the inverted index.

Layout (artifact format ``learned-sparse`` v1): ``postings/`` (a ``sparse-inverted`` artifact),
``query/`` (``idf.npy``, ``query.json``, ``tokenizer/``) and the model's manifest params.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from retrieval.data.beir import iter_corpus
from retrieval.encoders.backbone import load_fast_tokenizer
from retrieval.encoders.idf_query import CONFIG_FILE, TABLE_FILE, IdfQueryEncoder
from retrieval.index.inverted import InvertedIndex, build_inverted_index, check_quantization
from retrieval.query_checks import check_text, check_texts
from sparsekit.artifacts import fingerprint, open_artifact, write_artifact
from sparsekit.errors import InputError

FORMAT = "learned-sparse"
VERSION = 1


def encode_corpus(model_dir: str | Path, corpus: str | Path, batch_size: int = 32, top_k: int | None = None,
                  threshold: float = 0.0, progress: bool = True) -> tuple[list[str], sp.csr_matrix]:
    """Encode a BEIR corpus with a trained model, streaming ``batch_size``-document batches."""
    from retrieval.encoders.sparse_doc import SparseModel
    from retrieval.training.teachers import doc_contents

    batches = iter_corpus(Path(corpus), batch_size=max(batch_size, 256))
    first = next(batches, None)
    if first is None:  # before the model loads
        raise InputError(corpus, "corpus has no documents")
    model = SparseModel.load(model_dir)
    ids: list[str] = []
    parts: list[sp.csr_matrix] = []
    bar = tqdm(desc="encoding corpus", unit="doc", disable=not progress)
    for batch in itertools.chain([first], batches):
        texts = [doc_contents(d) for d in batch]
        parts.append(model.doc.encode(texts, batch_size=batch_size, top_k=top_k, threshold=threshold,
                                      progress=False))
        ids.extend(d.id for d in batch)
        bar.update(len(batch))
    bar.close()
    return ids, sp.vstack(parts, format="csr")


def build_learned_sparse_index(model: str | Path, corpus: str | Path, out: str | Path,
                               quantization: str = "uint8", top_k: int | None = None,
                               threshold: float = 0.0, batch_size: int = 32, overwrite: bool = False,
                               progress: bool = True, vectors: tuple[list[str], sp.csr_matrix] | None = None
                               ) -> Path:
    """Encode ``corpus`` with the model at ``model`` and write a ``learned-sparse`` index to ``out``.

    ``vectors`` (``doc_ids``, CSR) skips encoding when the caller already has the document vectors.
    """
    model, corpus = Path(model), Path(corpus)
    manifest = open_artifact(model, "sparse-doc-encoder", 1)
    check_quantization(quantization)  # now, not after the corpus is encoded
    doc_ids, csr = vectors or encode_corpus(model, corpus, batch_size, top_k, threshold, progress)
    params = {"model": str(model), "model_params": manifest.params, "top_k": top_k, "threshold": threshold}
    with write_artifact(out, FORMAT, VERSION, params=params, source=fingerprint([corpus]),
                        overwrite=overwrite) as writer:
        postings = build_inverted_index(doc_ids, csr, writer.path("postings"), quantization=quantization)
        nnz = int(open_artifact(postings, verify=False).counts["nnz"])  # after quantization dropped some
        query = writer.path("query")
        query.mkdir()
        for name in (TABLE_FILE, CONFIG_FILE):
            shutil.copy2(model / name, query / name)
        shutil.copytree(model / "tokenizer", query / "tokenizer")
        writer.counts.update(num_docs=len(doc_ids), nnz=nnz, encoded_nnz=int(csr.nnz),
                             avg_doc_terms=round(nnz / max(1, len(doc_ids)), 2))
    return Path(out)


class LearnedSparseIndex:
    """Text search over a ``learned-sparse`` directory: query table lookup, then the inverted index."""

    kind = "sparse"

    def __init__(self, postings: InvertedIndex, query: IdfQueryEncoder) -> None:
        self.postings = postings
        self.query = query
        self._table = query.table()

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, device: str = "cpu") -> LearnedSparseIndex:
        """Validate the manifest (checksums of every file when ``verify``) and open both halves."""
        path = Path(path)
        open_artifact(path, FORMAT, VERSION, verify=verify)
        query_dir = path / "query"
        query = IdfQueryEncoder.read(query_dir, load_fast_tokenizer(query_dir / "tokenizer"))
        return cls(InvertedIndex.open(path / "postings", verify=False, device=device), query)

    @property
    def num_docs(self) -> int:
        return self.postings.num_docs

    def encode_queries(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Inference-free query vectors: token ids and their table weights (no model runs)."""
        return self.query.encode_batch(check_texts(texts), self._table)

    def encode_packed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`encode_queries` packed as ``(offsets, terms, values)``, as ``search_topk`` takes them."""
        return self.query.encode_packed(check_texts(texts), self._table)

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        return self.postings.search_packed(*self.encode_packed([check_text(text)]), k)[0]

    def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
        return self.postings.search_packed(*self.encode_packed(texts), k, threads)

    def search_sparse(self, indices: list[int], values: list[float], k: int) -> list[tuple[str, float]]:
        """A raw weighted-token query (vocabulary ids), bypassing the table."""
        return self.postings.search_sparse(indices, values, k)


