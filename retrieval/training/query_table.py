"""Second training stage: the inference-free query table, trained on frozen document vectors.

Geng et al. (2024), "Towards Competitive Search Relevance For Inference-Free Learned Sparse
Retrievers": the query side is a tokenizer and a per-token weight table, no model. The table starts as
the corpus IDF (:mod:`retrieval.encoders.idf_query`) and may be trained. Here it is trained after the
document encoder (:mod:`retrieval.training.sparse`), with the document vectors fixed:

    score(q, d) = sum_{t in q} relu(w_t) * w_d(t)
    loss = KD(student, teacher) + ce_weight * CE(positives) + l2 * ||w - idf||^2

over the stage-1 candidates and teacher scores (the same BM25 + MiniLM ensemble target, per-query
min-max, mean, x30, KL; CE is the in-candidate cross-entropy of the judged positives). The stage-1
split, pseudo-queries and teacher cache are reused; document vectors come from the stage-1 hidden
cache. For each learning rate of a small grid the table trains from IDF; dev NDCG@10 (the split of
train) is measured before training and after every epoch, and the best (learning rate, epoch) table is
kept, so the stage never ends below the IDF table on dev. The whole table trains in
about a second per epoch on CPU: a query only touches its own tokens' weights.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm import tqdm

from retrieval.encoders.sparse_doc import SparseModel
from retrieval.losses.ensemble_kd import ensemble_kd_loss, ensemble_teacher_scores
from retrieval.training.dev_eval import document_cache, encode_cached, evaluate_dev, save_documents
from retrieval.training.hidden_cache import build_hidden_cache
from retrieval.training.sparse import SparseTrainConfig, prepare_data
from retrieval.training.teachers import TeacherCache, TeacherConfig, doc_contents
from sparsekit.device import default_device


@dataclass
class QueryTableConfig:
    """A query-table run over the stage-1 model at ``model`` (stored in the new model's manifest)."""

    model: str                    # trained sparse-doc-encoder artifact (stage 1)
    out: str                      # model artifact to write: same document encoder, trained table
    work_dir: str | None = None   # stage-1 caches (teachers, hidden states); default <model>.work
    epochs: int = 4
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1)  # each trains from the IDF table; best (lr, epoch) on dev
    batch_queries: int = 64
    ce_weight: float = 1.0
    l2: float = 0.0
    seed: int = 13
    progress: bool = True
    overwrite: bool = False


@dataclass
class _Tensors:
    """Per training query: candidate-by-token document weights and what the loss needs."""

    weights: torch.Tensor    # [Q, C, T] document weight of each query token in each candidate
    tokens: torch.Tensor     # [Q, T] query token ids (padding: 0, masked)
    mask: torch.Tensor       # [Q, T]
    valid: torch.Tensor      # [Q, C] real candidates
    teacher: torch.Tensor    # [Q, C] ensemble target logits
    positives: torch.Tensor  # [Q, C]


def stage_one_config(model: SparseModel, work_dir: Path) -> SparseTrainConfig:
    """The data settings of the stage-1 run recorded in ``model``'s manifest."""
    rec = model.extra.get("training")
    if not rec:
        raise ValueError("the model records no training run: train it with `sparsekit train sparse` first")
    return SparseTrainConfig(data=rec["data"], out="", work_dir=str(work_dir), split=rec["split"],
                             dev_fraction=rec["dev_fraction"], seed=rec["seed"],
                             pseudo_queries=rec["pseudo_queries"], teachers=TeacherConfig(**rec["teachers"]))


@dataclass
class StageData:
    """The stage-1 split and caches a query-table run reads."""

    doc_ids: list[str]
    contents: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    train_q: list[str]
    dev_q: list[str]
    cache: TeacherCache


def stage_data(model: SparseModel, work: Path, progress: bool = True) -> StageData:
    """Reload the stage-1 corpus, queries, split and teacher cache recorded in ``model``."""
    stage1 = stage_one_config(model, work)
    stage1.progress = progress
    corpus, queries, qrels, train_q, dev_q, cache = prepare_data(stage1, work)
    return StageData(list(corpus), [doc_contents(d) for d in corpus.values()], queries, qrels, train_q, dev_q,
                     cache)


def select_table(model: SparseModel, docs: sp.csr_matrix, data: StageData, cfg: QueryTableConfig
                 ) -> tuple[list[dict], dict[str, float], np.ndarray]:
    """Train from the model's table at each of ``cfg.lrs`` against ``docs``; dev metrics before and after
    every epoch. Returns (history, the kept ``{lr, epoch}``, its table); the model keeps its table."""
    tensors = _tensors(model, docs, data.cache, data.queries, data.train_q)

    def dev_metrics() -> dict[str, float]:
        metrics = evaluate_dev(model, docs, data.doc_ids, data.queries, data.qrels, data.dev_q)
        return {k: round(metrics[k], 4) for k in ("ndcg@10", "recall@100", "mrr@10")}

    init = model.query.table().copy()
    history = [{"lr": 0.0, "epoch": 0, **dev_metrics()}]
    best = (history[0], init)
    for lr in cfg.lrs:
        model.query.set_table(init)
        runs, table = _fit(model, tensors, cfg, lr, dev_metrics)
        history += runs
        if max(h["ndcg@10"] for h in runs) > best[0]["ndcg@10"]:
            best = (max(runs, key=lambda h: h["ndcg@10"]), table)
    model.query.set_table(init)
    return history, {"lr": best[0]["lr"], "epoch": best[0]["epoch"]}, best[1]


def train_query_table(cfg: QueryTableConfig) -> Path:
    """Train the table of ``cfg.model`` on its frozen document vectors; write the model to ``cfg.out``."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists (set overwrite=True / --overwrite to replace it)")
    start = time.perf_counter()
    model = SparseModel.load(cfg.model, device=default_device())
    work = Path(cfg.work_dir) if cfg.work_dir else Path(cfg.model).parent / f"{Path(cfg.model).name}.work"
    data = stage_data(model, work, cfg.progress)
    docs = _document_vectors(model, Path(cfg.model), data.contents, work, cfg.progress)
    history, kept, table = select_table(model, docs, data, cfg)
    model.query.set_table(table)
    model.extra = {**model.extra, "query_table": {
        **asdict(cfg), "train_queries": len(_training_rows(data.cache, data.train_q)),
        "dev": history, "kept": kept, "wall_s": round(time.perf_counter() - start, 1)}}
    return model.save(out, overwrite=cfg.overwrite, source={"model": str(cfg.model)})


def _document_vectors(model: SparseModel, model_dir: Path, contents: list[str], work: Path, progress: bool
                      ) -> sp.csr_matrix:
    """The corpus encoded by the stage-1 model (cached in ``work``; stage 1 leaves its final dev encoding)."""
    path = document_cache(model_dir, contents, work)
    if path.exists():
        return sp.load_npz(path).tocsr()
    hidden = build_hidden_cache(contents, model.doc, work, progress=progress)
    prior = model.doc.lexical_prior_matrix(contents) if model.doc.lexical_scale is not None else None
    with torch.no_grad():
        docs = encode_cached(model, hidden, progress=progress, prior=prior)
    save_documents(path, docs)
    return docs


def _training_rows(cache: TeacherCache, train_q: list[str]) -> list[int]:
    """Teacher-cache rows of the training queries that have a judged positive among their candidates."""
    row = {q: i for i, q in enumerate(cache.query_ids)}
    return [row[q] for q in train_q if q in row and cache.positives[row[q]].any()]


def _tensors(model: SparseModel, docs: sp.csr_matrix, cache: TeacherCache, queries: dict[str, str],
             train_q: list[str]) -> _Tensors:
    rows = _training_rows(cache, train_q)
    offsets, ids, _ = model.query.encode_packed([queries[cache.query_ids[r]] for r in rows],
                                                model.query.binary_table())
    bags = [ids[a:b] for a, b in itertools.pairwise(offsets.tolist())]
    width = max([1, *map(len, bags)])
    weights = np.zeros((len(rows), cache.candidates.shape[1], width), np.float32)
    tokens = np.zeros((len(rows), width), np.int64)
    columns = docs.tocsc()
    for i, (r, bag) in enumerate(zip(rows, bags, strict=True)):
        cand = cache.candidates[r]
        real = cand >= 0
        if len(bag):
            weights[i, real, :len(bag)] = columns[:, bag].tocsr()[cand[real]].toarray()
        tokens[i, :len(bag)] = bag
    mask = torch.arange(width)[None, :] < torch.tensor([len(b) for b in bags])[:, None]
    teacher = ensemble_teacher_scores([torch.from_numpy(cache.bm25[rows]),
                                       torch.from_numpy(cache.dense[rows])])
    return _Tensors(torch.from_numpy(weights), torch.from_numpy(tokens), mask.float(),
                    torch.from_numpy(cache.candidates[rows] >= 0), teacher,
                    torch.from_numpy(cache.positives[rows]).float())


def _loss(table: torch.Tensor, init: torch.Tensor, data: _Tensors, b: torch.Tensor,
          cfg: QueryTableConfig) -> torch.Tensor:
    query = F.relu(table[data.tokens[b]]) * data.mask[b]
    scores = torch.einsum("bct,bt->bc", data.weights[b], query).masked_fill(~data.valid[b], -1e4)
    loss = ensemble_kd_loss(scores, data.teacher[b].masked_fill(~data.valid[b], -1e4))
    if cfg.ce_weight:
        logp, pos = F.log_softmax(scores, dim=1), data.positives[b]
        loss = loss + cfg.ce_weight * (-(logp * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()
    if cfg.l2:
        loss = loss + cfg.l2 * ((table - init) ** 2).sum()
    return loss


def _fit(model: SparseModel, data: _Tensors, cfg: QueryTableConfig, lr: float,
         dev_metrics: Callable[[], dict]) -> tuple[list[dict], np.ndarray]:
    """Adam at ``lr`` from the model's table; dev metrics after each epoch; returns (history, best table)."""
    torch.manual_seed(cfg.seed)
    init = torch.from_numpy(model.query.table().copy())
    table = torch.nn.Parameter(init.clone())
    optim = torch.optim.Adam([table], lr=lr)
    history: list[dict] = []
    best, best_ndcg = init.numpy().copy(), -1.0
    n = data.weights.shape[0]
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n)
        losses = []
        bar = tqdm(range(0, n, cfg.batch_queries), desc=f"lr {lr} epoch {epoch}", disable=not cfg.progress)
        for s in bar:
            loss = _loss(table, init, data, order[s:s + cfg.batch_queries], cfg)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        model.query.set_table(table.detach().numpy())
        history.append({"lr": lr, "epoch": epoch, "loss": round(float(np.mean(losses)), 4), **dev_metrics()})
        if history[-1]["ndcg@10"] > best_ndcg:
            best, best_ndcg = model.query.table().copy(), history[-1]["ndcg@10"]
        if cfg.progress:
            tqdm.write(f"query table: {history[-1]}")
    return history, best
