"""Candidate mining and cached teacher scores for heterogeneous ensemble distillation.

Geng et al. (2024) distil a sparse student from a dense and a sparse teacher scoring each query's
candidates. Here, offline: the sparse teacher is BM25 (bm25s, Lucene BM25 formula, k1=0.9, b=0.4,
English stopwords + Snowball stemmer) and the dense teacher is all-MiniLM-L6-v2 (cosine). For every
training query the candidates are the union of both teachers' top-``depth`` documents plus the
judged positives; both teachers score every candidate. The result is cached on disk as a
``teacher-cache`` artifact (with the dense corpus embeddings) keyed by the corpus fingerprint, the
query set and the parameters, so ablations and resumed runs never recompute it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retrieval.data.beir import Doc
from retrieval.encoders.backbone import check_max_length
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.bounds import at_least, count, within
from sparsekit.errors import ArtifactError

FORMAT = "teacher-cache"
VERSION = 1


@dataclass
class TeacherConfig:
    """How candidates are mined and scored."""

    depth: int = 50          # top-k of each teacher kept as candidates
    k1: float = 0.9
    b: float = 0.4
    dense_max_length: int = 256
    batch_size: int = 64

    def __post_init__(self) -> None:
        count(self, 1, "depth", "dense_max_length", "batch_size")
        check_max_length(self.dense_max_length, name="dense_max_length")  # the MiniLM teacher
        at_least(self, 0, "k1")
        within(self, 0.0, 1.0, "b")


@dataclass
class TeacherCache:
    """Candidates and teacher scores for a list of queries over a fixed corpus."""

    query_ids: list[str]
    candidates: np.ndarray    # int32 [Q, C], corpus row ids, -1 = padding
    bm25: np.ndarray          # float32 [Q, C]
    dense: np.ndarray         # float32 [Q, C]
    positives: np.ndarray     # bool [Q, C]


def doc_contents(doc: Doc) -> str:
    """What every encoder and teacher reads of a document: ``title + " " + text``."""
    return f"{doc.title} {doc.text}".strip()


class Bm25Teacher:
    """Full-corpus BM25 scores per query (bm25s, Lucene BM25 variant)."""

    def __init__(self, contents: list[str], k1: float, b: float) -> None:
        import bm25s
        import Stemmer

        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        tokens = bm25s.tokenize(contents, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        tokens = self._bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, return_ids=False,
                                      show_progress=False)[0]
        if not tokens:  # only stop-words: BM25 scores every document 0
            return np.zeros(self.retriever.scores["num_docs"], dtype=np.float32)
        return np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)


def _candidates(bm25: np.ndarray, dense: np.ndarray, positives: list[int], depth: int) -> np.ndarray:
    depth = min(depth, len(bm25) - 1)  # a corpus smaller than the depth: every other document
    top_b = np.argpartition(-bm25, depth)[:depth]
    top_d = np.argpartition(-dense, depth)[:depth]
    pool = np.unique(np.concatenate([top_b, top_d, np.asarray(positives, dtype=np.int64)]))
    return pool[np.argsort(-(bm25[pool] / max(bm25.max(), 1e-9) + dense[pool]), kind="stable")]


def _cache_key(corpus: dict[str, Doc], queries: dict[str, str], qrels: dict[str, dict[str, int]],
               config: TeacherConfig) -> str:
    """Everything the mined result depends on: the documents' ids and text, the queries, the judgements
    (they pick the positives) and the settings; an edited label or document gets a new cache."""
    judged = sorted((q, sorted(docs.items())) for q, docs in qrels.items())
    digest = hashlib.sha256(json.dumps([sorted(queries.items()), judged, asdict(config)]).encode())
    for doc_id, doc in corpus.items():
        digest.update(json.dumps([doc_id, doc_contents(doc)]).encode())
    return digest.hexdigest()[:16]


def mine_teachers(corpus: dict[str, Doc], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                  config: TeacherConfig, cache_dir: Path | None = None, progress: bool = True
                  ) -> TeacherCache:
    """Mine candidates and score them with both teachers (or load the cached result)."""
    key = _cache_key(corpus, queries, qrels, config)
    path = cache_dir / f"teachers-{key}" if cache_dir else None
    if path is not None and path.exists():
        try:
            return load_teachers(path)
        except ArtifactError:
            pass  # a corrupt cache is rebuilt below (overwrite=True)
    cache = _compute(corpus, queries, qrels, config, progress)
    if path is not None:
        save_teachers(cache, path, {"key": key, **asdict(config)})
    return cache


def _compute(corpus: dict[str, Doc], queries: dict[str, str], qrels: dict[str, dict[str, int]],
             config: TeacherConfig, progress: bool) -> TeacherCache:
    from tqdm import tqdm

    from retrieval.encoders.dense import DenseEncoder

    doc_ids = list(corpus)
    row = {d: i for i, d in enumerate(doc_ids)}
    contents = [doc_contents(corpus[d]) for d in doc_ids]
    bm25 = Bm25Teacher(contents, config.k1, config.b)
    dense = DenseEncoder.from_minilm(max_length=config.dense_max_length)
    doc_emb = dense.encode(contents, batch_size=config.batch_size, progress=progress)
    qids = sorted(queries)
    q_emb = dense.encode([queries[q] for q in qids], batch_size=config.batch_size, progress=False)
    rows = []
    for i, qid in enumerate(tqdm(qids, desc="mining candidates", disable=not progress)):
        b_scores, d_scores = bm25.scores(queries[qid]), doc_emb @ q_emb[i]
        pos = [row[d] for d, g in qrels.get(qid, {}).items() if g > 0 and d in row]
        cand = _candidates(b_scores, d_scores, pos, config.depth)
        rows.append((cand, b_scores[cand], d_scores[cand], np.isin(cand, pos)))
    width = max(len(r[0]) for r in rows)
    shape = (len(qids), width)
    out = TeacherCache(qids, np.full(shape, -1, np.int32), np.zeros(shape, np.float32),
                       np.zeros(shape, np.float32), np.zeros(shape, bool))
    for i, (cand, b, d, p) in enumerate(rows):
        n = len(cand)
        out.candidates[i, :n], out.bm25[i, :n], out.dense[i, :n], out.positives[i, :n] = cand, b, d, p
    return out


_ARRAYS = ("candidates", "bm25", "dense", "positives")


def save_teachers(cache: TeacherCache, path: Path, params: dict) -> None:
    with write_artifact(path, FORMAT, VERSION, params=params, overwrite=True) as out:
        for name in _ARRAYS:
            np.save(out.path(f"{name}.npy"), getattr(cache, name))
        out.path("query_ids.json").write_text(json.dumps(cache.query_ids))
        out.counts.update(queries=len(cache.query_ids), width=int(cache.candidates.shape[1]))


def load_teachers(path: Path) -> TeacherCache:
    open_artifact(path, FORMAT, VERSION)
    arrays = {name: np.load(path / f"{name}.npy") for name in _ARRAYS}
    return TeacherCache(query_ids=json.loads((path / "query_ids.json").read_text()), **arrays)
