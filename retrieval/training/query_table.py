"""Second training stage: the inference-free query table (and the residual weight), on frozen documents.

Geng et al. (2024), "Towards Competitive Search Relevance For Inference-Free Learned Sparse
Retrievers": the query side is a tokenizer and a per-token weight table, no model. The table starts as
the corpus IDF (:mod:`retrieval.encoders.idf_query`) and may be trained. Here it is trained after the
document encoder (:mod:`retrieval.training.sparse`), with the document vectors fixed. When the encoder
has a lexical prior, a document vector is ``base + g * residual``: ``base`` the scaled prior, ``residual``
the learned term weights, and the scalar ``g`` (``SparseEncoderConfig.residual_scale``, 1 after stage 1)
is learned here too (in log space: it stays positive and cannot die at zero, as a relu'd scalar
would; it is kept to 4 significant digits), so the stage also decides how much the learned terms count
beside the prior. A model saved with ``residual_scale = 0`` has no learned part left to weigh: its
table alone is trained.

    score(q, d) = sum_{t in q} relu(w_t) * (base_d(t) + g * residual_d(t)),   g = exp(a)
    loss = KD(student, teacher) + ce_weight * CE(positives) + l2 * ||w - w_start||^2

over the stage-1 candidates and teacher scores (the same BM25 + MiniLM ensemble target, per-query
min-max, mean, x30, KL; CE is the in-candidate cross-entropy of the judged positives). The stage-1
split, pseudo-queries and teacher cache are reused; document vectors come from the stage-1 hidden
cache. For each learning rate of a small grid the table trains from the model's table (IDF after
stage 1) and ``g`` from the model's value (1 after stage 1); dev NDCG@10 (the split of train) is
measured before training and after every epoch, and the best (learning rate, epoch) is kept, so the
stage never ends below its starting point on dev. The whole table trains in about a second per epoch
on CPU: a query only touches its own tokens' weights.
"""

from __future__ import annotations

import itertools
import time
import warnings
import zipfile
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
from sparsekit.artifacts import check_target
from sparsekit.bounds import at_least, count, each_positive
from sparsekit.device import default_device
from sparsekit.errors import InputError


@dataclass
class QueryTableConfig:
    """A query-table run over the stage-1 model at ``model`` (stored in the new model's manifest)."""

    model: str                    # trained sparse-doc-encoder artifact (stage 1)
    out: str                      # model artifact to write: same document encoder, trained table
    work_dir: str | None = None   # stage-1 caches (teachers, hidden states); default: stage 1's, else
    #                               <model>.work
    epochs: int = 4
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1)  # each trains from the IDF table; best (lr, epoch) on dev
    batch_queries: int = 64
    ce_weight: float = 1.0
    l2: float = 0.0
    learn_residual_scale: bool = True  # learn g (encoders with a lexical prior); False: only the table
    seed: int = 13
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        count(self, 1, "epochs", "batch_queries")
        at_least(self, 0, "ce_weight", "l2")
        each_positive(self, "lrs")


@dataclass
class DocumentParts:
    """Frozen corpus vectors as ``base + g * residual`` (``residual`` None: ``base`` is the whole vector)."""

    base: sp.csr_matrix
    residual: sp.csr_matrix | None = None

    def combine(self, scale: float) -> sp.csr_matrix:
        """The document vectors at residual weight ``scale``."""
        return self.base if self.residual is None else (self.base + scale * self.residual).tocsr()


@dataclass
class _Tensors:
    """Per training query: candidate-by-token document weights and what the loss needs."""

    weights: torch.Tensor    # [Q, C, T] base document weight of each query token in each candidate
    residual: torch.Tensor | None  # [Q, C, T] residual weights (None: no learned residual weight)
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
    if not Path(rec["data"]).is_dir():
        raise InputError(rec["data"], "the stage-1 data folder recorded in the model is not found (a "
                                      "relative path is read from the current directory)")
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


def select_table(model: SparseModel, docs: DocumentParts, data: StageData, cfg: QueryTableConfig
                 ) -> tuple[list[dict], dict[str, float], np.ndarray]:
    """Train from the model's table (and residual weight) at each of ``cfg.lrs`` against ``docs``; dev
    metrics before and after every epoch. Returns (history, the kept ``{lr, epoch, residual_scale}``, its
    table); the model keeps its table and residual weight."""
    scale0 = float(model.doc.config.residual_scale)
    if not cfg.learn_residual_scale:
        docs = DocumentParts(docs.combine(scale0))
    tensors = _tensors(model, docs, data.cache, data.queries, data.train_q)

    def dev_metrics(scale: float) -> dict[str, float]:
        metrics = evaluate_dev(model, docs.combine(scale), data.doc_ids, data.queries, data.qrels, data.dev_q)
        return {k: round(metrics[k], 4) for k in ("ndcg@10", "recall@100", "mrr@10")}

    init = model.query.table().copy()
    history = [{"lr": 0.0, "epoch": 0, "residual_scale": scale0, **dev_metrics(scale0)}]
    best = (history[0], init)
    for lr in cfg.lrs:
        model.query.set_table(init)
        runs, table = _fit(model, tensors, cfg, lr, scale0, dev_metrics)
        history += runs
        if max(h["ndcg@10"] for h in runs) > best[0]["ndcg@10"]:
            best = (max(runs, key=lambda h: h["ndcg@10"]), table)
    model.query.set_table(init)
    return history, {k: best[0][k] for k in ("lr", "epoch", "residual_scale")}, best[1]


def train_query_table(cfg: QueryTableConfig) -> Path:
    """Train the table of ``cfg.model`` on its frozen document vectors; write the model to ``cfg.out``."""
    out = Path(cfg.out)
    check_target(out, cfg.overwrite)  # before any work, not after training
    start = time.perf_counter()
    model = SparseModel.load(cfg.model, device=default_device())
    _require_dev(model, cfg.model)
    work = Path(cfg.work_dir) if cfg.work_dir else _stage_one_work(model, Path(cfg.model))
    data = stage_data(model, work, cfg.progress)
    docs = document_parts(model, Path(cfg.model), data, work, cfg.progress)
    history, kept, table = select_table(model, docs, data, cfg)
    model.query.set_table(table)
    if docs.residual is not None and cfg.learn_residual_scale:
        model.doc.config.residual_scale = kept["residual_scale"]
    model.extra = {**model.extra, "query_table": {
        **asdict(cfg), "train_queries": len(_training_rows(data.cache, data.train_q)),
        "dev": history, "kept": kept, "wall_s": round(time.perf_counter() - start, 1),
        "teacher_padding": "masked"}}  # the teacher target's min-max skips padded candidates (178dc14)
    return model.save(out, overwrite=cfg.overwrite, source={"model": str(cfg.model)})


def _stage_one_work(model: SparseModel, model_dir: Path) -> Path:
    """Stage 1's work directory as the model records it (where its caches are), else ``<model>.work``."""
    recorded = (model.extra.get("training") or {}).get("work_dir")
    if recorded and Path(recorded).is_absolute() and Path(recorded).is_dir():
        return Path(recorded)
    return model_dir.parent / f"{model_dir.name}.work"


def _require_dev(model: SparseModel, model_dir: str) -> None:
    """The stage picks its (lr, epoch) on stage 1's dev queries: a run that held out none is refused."""
    rec = model.extra.get("training")  # none at all: stage_one_config says so
    if rec and not rec.get("dev_queries"):
        raise InputError(model_dir, f"stage 1 held out no dev queries (dev_fraction={rec['dev_fraction']}, "
                                    f"{rec.get('train_queries')} training queries): the query-table stage "
                                    f"selects on dev; retrain stage 1 with a dev split")


def _document_vectors(model: SparseModel, model_dir: Path, contents: list[str], work: Path, progress: bool,
                      prior: sp.csr_matrix | None) -> sp.csr_matrix:
    """The corpus encoded by the model at ``model_dir`` (cached in ``work``; stage 1 leaves its final dev
    encoding there). ``prior``: the corpus' lexical prior rows when the encoder has one."""
    path = document_cache(model_dir, contents, work)
    if path.exists():
        try:
            return sp.load_npz(path).tocsr()
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a damaged cache
            warnings.warn(f"{path}: unreadable document cache ({exc}); re-encoding the corpus", stacklevel=2)
    hidden = build_hidden_cache(contents, model.doc, work, progress=progress)
    with torch.no_grad():
        docs = encode_cached(model, hidden, progress=progress, prior=prior)
    save_documents(path, docs)
    return docs


def document_parts(model: SparseModel, model_dir: Path, data: StageData, work: Path, progress: bool = True
                   ) -> DocumentParts:
    """The corpus vectors of the model at ``model_dir``, split into the scaled lexical prior and the
    learned residual (unscaled: ``docs = base + residual_scale * residual``); the whole vectors as
    ``base`` when the encoder has no prior or a zero residual weight."""
    prior = model.doc.lexical_prior_matrix(data.contents) if model.doc.lexical_scale is not None else None
    docs = _document_vectors(model, model_dir, data.contents, work, progress, prior)
    scale = model.doc.config.residual_scale
    if prior is None or scale <= 0:
        return DocumentParts(docs)
    base = (float(torch.relu(model.doc.lexical_scale.detach())) * prior).tocsr()
    residual = ((docs - base) / scale).tocsr()
    residual.data[residual.data < 1e-6] = 0.0  # round-off where it was zero (learned weights are >= 0)
    residual.eliminate_zeros()
    return DocumentParts(base.astype(np.float32), residual.astype(np.float32))


def _training_rows(cache: TeacherCache, train_q: list[str]) -> list[int]:
    """Teacher-cache rows of the training queries that have a judged positive among their candidates."""
    row = {q: i for i, q in enumerate(cache.query_ids)}
    return [row[q] for q in train_q if q in row and cache.positives[row[q]].any()]


def _tensors(model: SparseModel, docs: DocumentParts, cache: TeacherCache, queries: dict[str, str],
             train_q: list[str]) -> _Tensors:
    rows = _training_rows(cache, train_q)
    offsets, ids, _ = model.query.encode_packed([queries[cache.query_ids[r]] for r in rows],
                                                model.query.binary_table())
    bags = [ids[a:b] for a, b in itertools.pairwise(offsets.tolist())]
    width = max([1, *map(len, bags)])
    tokens = np.zeros((len(rows), width), np.int64)
    for i, bag in enumerate(bags):
        tokens[i, :len(bag)] = bag
    weights = _candidate_weights(docs.base, cache.candidates[rows], bags, width)
    residual = None if docs.residual is None else _candidate_weights(docs.residual, cache.candidates[rows],
                                                                     bags, width)
    mask = torch.arange(width)[None, :] < torch.tensor([len(b) for b in bags])[:, None]
    valid = torch.from_numpy(cache.candidates[rows] >= 0)
    teacher = ensemble_teacher_scores([torch.from_numpy(cache.bm25[rows]),
                                       torch.from_numpy(cache.dense[rows])], valid=valid)
    return _Tensors(weights, residual, torch.from_numpy(tokens), mask.float(), valid, teacher,
                    torch.from_numpy(cache.positives[rows]).float())


def _candidate_weights(docs: sp.csr_matrix, candidates: np.ndarray, bags: list[np.ndarray], width: int
                       ) -> torch.Tensor:
    """[Q, C, T]: the weight of each query's tokens in each of its candidates (0 for padding)."""
    out = np.zeros((len(bags), candidates.shape[1], width), np.float32)
    columns = docs.tocsc()
    for i, (cand, bag) in enumerate(zip(candidates, bags, strict=True)):
        real = cand >= 0
        if len(bag):
            out[i, real, :len(bag)] = columns[:, bag].tocsr()[cand[real]].toarray()
    return torch.from_numpy(out)


def _loss(table: torch.Tensor, log_scale: torch.Tensor, init: torch.Tensor, data: _Tensors, b: torch.Tensor,
          cfg: QueryTableConfig) -> torch.Tensor:
    query = F.relu(table[data.tokens[b]]) * data.mask[b]
    docs = data.weights[b] if data.residual is None else data.weights[b] + log_scale.exp() * data.residual[b]
    scores = torch.einsum("bct,bt->bc", docs, query).masked_fill(~data.valid[b], -1e4)
    loss = ensemble_kd_loss(scores, data.teacher[b].masked_fill(~data.valid[b], -1e4))
    if cfg.ce_weight:
        logp, pos = F.log_softmax(scores, dim=1), data.positives[b]
        loss = loss + cfg.ce_weight * (-(logp * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()
    if cfg.l2:
        loss = loss + cfg.l2 * ((table - init) ** 2).sum()
    return loss


def _fit(model: SparseModel, data: _Tensors, cfg: QueryTableConfig, lr: float, scale0: float,
         dev_metrics: Callable[[float], dict]) -> tuple[list[dict], np.ndarray]:
    """Adam at ``lr`` from the model's table and residual weight ``scale0``; dev metrics after each epoch;
    returns (history, best table)."""
    torch.manual_seed(cfg.seed)
    init = torch.from_numpy(model.query.table().copy())
    table = torch.nn.Parameter(init.clone())
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(max(scale0, 1e-12)))))
    optim = torch.optim.Adam([table, log_scale] if data.residual is not None else [table], lr=lr)
    history: list[dict] = []
    best, best_ndcg = init.numpy().copy(), -1.0
    n = data.weights.shape[0]
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n)
        losses = []
        bar = tqdm(range(0, n, cfg.batch_queries), desc=f"lr {lr} epoch {epoch}", disable=not cfg.progress)
        for s in bar:
            loss = _loss(table, log_scale, init, data, order[s:s + cfg.batch_queries], cfg)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        model.query.set_table(table.detach().numpy())
        g = float(f"{float(log_scale.detach().exp()):.4g}") if data.residual is not None else scale0
        history.append({"lr": lr, "epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                        "residual_scale": g, **dev_metrics(g)})
        if history[-1]["ndcg@10"] > best_ndcg:
            best, best_ndcg = model.query.table().copy(), history[-1]["ndcg@10"]
        if cfg.progress:
            tqdm.write(f"query table: {history[-1]}")
    return history, best
