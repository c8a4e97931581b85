"""BM25 index kind: a Lucene index built and searched by Anserini through pyserini.

Reproduces Pyserini's BEIR "flat" BM25 baseline (Robertson & Zaragoza's BM25, Lucene's
implementation, k1=0.9, b=0.4): each BEIR document becomes one Anserini ``JsonCollection`` record
whose ``contents`` is ``title + " " + text``, analyzed by Anserini's default English analyzer (Porter
stemmer, Lucene stopwords), indexed with ``-storePositions -storeDocvectors -storeRaw``. On SciFact
test this gives NDCG@10 0.6789 / R@100 0.9253 (``benchmarks/bm25_scifact.py``).

On disk (format ``bm25-lucene``, version 1)::

    manifest.json   params (k1, b, contents, analyzer, anserini jar), source fingerprint, num_docs
    lucene/         the Lucene index files

The corpus is streamed batch by batch (:func:`retrieval.data.beir.iter_corpus`, which validates every
line) into a staging collection inside the artifact's temporary directory; the whole build happens
under :func:`sparsekit.artifacts.write_artifact`, so a failed or killed build leaves any index
already at ``out`` untouched. All Java work goes through :mod:`retrieval.engines`.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retrieval.data.beir import iter_corpus
from retrieval.engines import anserini, jvm, lucene
from retrieval.query_checks import check_text, check_texts
from sparsekit.artifacts import Manifest, fingerprint, open_artifact, write_artifact
from sparsekit.errors import ArtifactError, InputError

FORMAT = "bm25-lucene"
VERSION = 1
LUCENE_DIR = "lucene"
CONTENTS = 'title + " " + text'
ANALYZER = "Anserini DefaultEnglishAnalyzer (Porter stemmer, Lucene English stopwords)"
_STAGING_DIR = "_collection"
_DOCS_PER_FILE = 100_000
_BATCH = 4096


def _check_bm25_params(k1: Any, b: Any, threads: Any) -> tuple[float, float, int]:
    if isinstance(k1, bool) or not isinstance(k1, int | float) or not math.isfinite(k1) or k1 < 0:
        raise InputError("k1", f"must be a finite number >= 0, got {k1!r}")
    if isinstance(b, bool) or not isinstance(b, int | float) or not 0 <= b <= 1:
        raise InputError("b", f"must be a number in [0, 1], got {b!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError("threads", f"must be a positive integer, got {threads!r}")
    return float(k1), float(b), threads


def write_json_collection(corpus: Path, out_dir: Path, progress: bool = True) -> int:
    """Stream a BEIR ``corpus.jsonl`` into Anserini ``JsonCollection`` files; return the document count."""
    with anserini.CollectionWriter(out_dir, _DOCS_PER_FILE) as out, tqdm(
        desc=f"converting {corpus.name}", unit="doc", disable=not progress, leave=False
    ) as bar:
        for batch in iter_corpus(corpus, batch_size=_BATCH):
            for doc in batch:
                out.write({"id": doc.id, "contents": doc.title + " " + doc.text})
            bar.update(len(batch))
    if out.count == 0:
        raise InputError(corpus, "corpus has no documents")
    return out.count


def build_bm25_index(
    corpus: str | Path,
    out: str | Path,
    k1: float = 0.9,
    b: float = 0.4,
    threads: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build a BM25 Lucene index of a BEIR ``corpus.jsonl`` at ``out`` (atomically); return ``out``.

    ``k1`` and ``b`` are stored in the manifest and used at search time. Raises
    :class:`~sparsekit.errors.InputError` (file:line) on a malformed corpus,
    :class:`~sparsekit.errors.ArtifactError` when ``out`` exists and ``overwrite`` is false, and
    :class:`~retrieval.engines.jvm.LuceneError` when Anserini fails.
    """
    corpus, out = Path(corpus), Path(out)
    k1, b, threads = _check_bm25_params(k1, b, threads)
    if not corpus.is_file():
        raise InputError(corpus, "corpus file not found")
    params = {"k1": k1, "b": b, "contents": CONTENTS, "analyzer": ANALYZER, "collection": "JsonCollection",
              "anserini": jvm.anserini_jar().name, "threads": threads}
    with write_artifact(out, format=FORMAT, version=VERSION, params=params, source=fingerprint([corpus]),
                        overwrite=overwrite) as writer:
        staging = writer.path(_STAGING_DIR)
        num_docs = write_json_collection(corpus, staging, progress=progress)
        stats = anserini.build_bm25_lucene_index(staging, writer.path(LUCENE_DIR), threads=threads,
                                               expected_docs=num_docs)
        shutil.rmtree(staging)
        writer.counts["num_docs"] = stats.indexed
    return out


class Bm25Index:
    """An opened ``bm25-lucene`` index: BM25 search with the manifest's ``k1`` and ``b``."""

    kind = "bm25"

    def __init__(self, path: Path, manifest: Manifest, searcher: lucene.Bm25Searcher) -> None:
        self.path = path
        self.manifest = manifest
        self._searcher = searcher

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bm25Index:
        """Open and validate an index directory (``verify`` also checks every file's SHA-256)."""
        path = Path(path)
        manifest = open_artifact(path, format=FORMAT, version=VERSION, verify=verify)
        for key in ("k1", "b"):
            if not isinstance(manifest.params.get(key), int | float):
                raise ArtifactError(path, f"manifest params lack a numeric {key!r}")
        expected = manifest.counts.get("num_docs")
        if not isinstance(expected, int):
            raise ArtifactError(path, "manifest counts lack 'num_docs'")
        if not (path / LUCENE_DIR).is_dir():
            raise ArtifactError(path / LUCENE_DIR, "Lucene index folder missing")
        try:
            searcher = lucene.Bm25Searcher(path / LUCENE_DIR, k1=manifest.params["k1"],
                                           b=manifest.params["b"])
        except jvm.LuceneError as exc:
            raise ArtifactError(path, f"cannot open the Lucene index: {exc}") from exc
        if searcher.num_docs != expected:
            searcher.close()
            raise ArtifactError(path, f"Lucene index holds {searcher.num_docs} documents, manifest says "
                                      f"{expected} (corrupt)")
        return cls(path, manifest, searcher)

    @property
    def num_docs(self) -> int:
        return int(self.manifest.counts["num_docs"])

    @property
    def k1(self) -> float:
        return float(self.manifest.params["k1"])

    @property
    def b(self) -> float:
        return float(self.manifest.params["b"])

    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, BM25 score)`` for one query, best first."""
        return self._searcher.search(check_text(text), k)

    def batch_search(self, texts: list[str], k: int = 10, threads: int = 1) -> list[list[tuple[str, float]]]:
        """Top-``k`` hits for each query, in input order, searched by ``threads`` Java threads."""
        texts = check_texts(texts)
        qids = [str(i) for i in range(len(texts))]
        results = self._searcher.batch_search(texts, qids, k=k, threads=threads)
        return [results[q] for q in qids]

    def close(self) -> None:
        self._searcher.close()

    def __enter__(self) -> Bm25Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bm25Index({str(self.path)!r}, num_docs={self.num_docs}, k1={self.k1}, b={self.b})"
