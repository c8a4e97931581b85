"""Train the inference-free sparse document encoder (Geng et al. 2024) on a BEIR train split.

Pipeline: carve a dev split out of the train queries (tuning happens there, never on test) ->
mine candidates and cache BM25 + MiniLM teacher scores (:mod:`retrieval.training.teachers`) -> fit
the query IDF table on the corpus -> cache the frozen lower layers' hidden states
(:mod:`retrieval.training.hidden_cache`) -> train the upper layers and the head bias with

    loss = KD(student, teacher) + lambda_t * FLOPS(doc weights)

where the student scores a query's candidates with the IDF-aware matching function
(``relu(idf) . w_d``; ``idf_aware=False`` uses a binary query: the "plain FLOPS" ablation), KD is
the heterogeneous-ensemble KL (``distill="ensemble"``), one teacher alone (``"dense"``/``"bm25"``),
or an in-candidate contrastive cross-entropy with no teacher (``"none"``), and lambda_t follows the
quadratic warm-up. Seeded; checkpoints every ``checkpoint_every`` steps and resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm import tqdm

from retrieval.data.beir import Doc, available_splits, load_corpus, load_qrels, load_queries
from retrieval.encoders.backbone import NUM_LAYERS, check_max_length
from retrieval.encoders.sparse_doc import SparseEncoderConfig, SparseModel
from retrieval.losses.ensemble_kd import ensemble_kd_loss, ensemble_teacher_scores
from retrieval.losses.flops import FlopsWarmup, flops_loss
from retrieval.training.active_head import train_weights
from retrieval.training.hidden_cache import HiddenCache, build_hidden_cache
from retrieval.training.teachers import TeacherCache, TeacherConfig, doc_contents, mine_teachers
from sparsekit.artifacts import check_target, fingerprint
from sparsekit.atomic import atomic_path
from sparsekit.bounds import at_least, count, one_of, positive, within
from sparsekit.device import default_device
from sparsekit.errors import InputError

Distill = Literal["ensemble", "dense", "bm25", "none"]


@dataclass
class SparseTrainConfig:
    """Everything that defines a training run (stored in the model's manifest)."""

    data: str                        # BEIR folder
    out: str                         # model artifact directory to write
    work_dir: str | None = None      # caches + checkpoints (default: <out>.work beside out)
    split: str = "train"
    dev_fraction: float = 0.1
    seed: int = 13
    encoder: SparseEncoderConfig = field(default_factory=lambda: SparseEncoderConfig(freeze_layers=4))
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    distill: Distill = "ensemble"
    pseudo_queries: Literal["none", "titles"] = "none"  # extra training queries made from the corpus
    idf_aware: bool = True
    epochs: int = 2
    queries_per_step: int = 8
    candidates_per_query: int = 8    # 1 positive + hard negatives
    negative_depth: int = 30         # negatives drawn from the teachers' top candidates
    lr: float = 5e-5
    bias_lr: float = 3e-3
    head_lr: float = 1e-4            # untied vocabulary head (encoder.tie_head=False)
    kd_scale: float = 30.0
    temperature: float = 1.0         # student score divisor (contrastive / KD)
    flops_lambda: float = 0.002
    flops_warmup: int = 200
    checkpoint_every: int = 50
    device: str | None = None
    progress: bool = True
    max_steps: int | None = None     # stop early (smoke tests)
    dev_eval: bool = True            # full-corpus dev metrics after each epoch
    dev_eval_start: bool = True      # ... and before training (the untrained model)
    dev_eval_every: int = 1          # evaluate after every n-th epoch (and always after the last)
    overwrite: bool = False

    def __post_init__(self) -> None:
        within(self, 0.0, 1.0, "dev_fraction", open_high=True)
        count(self, 1, "epochs", "queries_per_step", "negative_depth", "checkpoint_every", "max_steps",
                 "dev_eval_every")
        count(self, 2, "candidates_per_query")
        at_least(self, 0, "flops_lambda")
        count(self, 0, "flops_warmup")
        positive(self, "lr", "bias_lr", "head_lr", "kd_scale", "temperature")
        one_of(self, "distill", get_args(Distill))
        one_of(self, "pseudo_queries", ("none", "titles"))
        check_max_length(self.encoder.max_length, name="encoder.max_length")  # trained on MiniLM
        if not 1 <= self.encoder.freeze_layers <= NUM_LAYERS:  # 0: the cached embeddings would go stale
            raise InputError("encoder.freeze_layers", f"training caches the frozen lower layers' output, so "
                                                      f"1..{NUM_LAYERS} layers (and the embeddings) are "
                                                      f"frozen; got {self.encoder.freeze_layers}")


def split_train_dev(qids: list[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of the train queries into (train, dev)."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n_dev = round(len(order) * dev_fraction)
    return sorted(order[n_dev:]), sorted(order[:n_dev])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Batcher:
    """Per-step (queries, candidate rows, teacher scores) drawn from the teacher cache."""

    def __init__(self, cache: TeacherCache, train_qids: list[str], cfg: SparseTrainConfig) -> None:
        pos = {q: i for i, q in enumerate(cache.query_ids)}
        self.rows = [pos[q] for q in train_qids if cache.positives[pos[q]].any()]
        self.cache, self.cfg = cache, cfg
        self._check_negatives()

    def _check_negatives(self) -> None:
        """Each training query needs a candidate that is not relevant (a corpus no larger than its
        judged documents has none): an InputError naming the query, not a numpy error mid-training."""
        for row in self.rows:
            valid = self.cache.candidates[row] >= 0
            if not (~self.cache.positives[row] & valid).any():
                query = self.cache.query_ids[row]
                raise InputError("qrels", f"training query {query!r}: every candidate the teachers retrieved "
                                          "is judged relevant, so there is no negative to train against (a "
                                          "corpus larger than the judged documents is needed)")

    def steps_per_epoch(self) -> int:
        return len(self.rows) // self.cfg.queries_per_step

    def epoch(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(self.rows)
        size = self.cfg.queries_per_step
        return [order[i:i + size] for i in range(0, len(order) - size + 1, size)]

    def sample(self, qrow: int, rng: np.random.Generator) -> np.ndarray:
        cand, positives = self.cache.candidates[qrow], self.cache.positives[qrow]
        valid = cand >= 0
        pos = np.flatnonzero(positives & valid)
        neg = np.flatnonzero(~positives & valid)[: self.cfg.negative_depth]
        need = self.cfg.candidates_per_query - 1
        picks = rng.choice(neg, size=need, replace=len(neg) < need)
        return np.concatenate([[rng.choice(pos)], picks])


def _teacher_targets(cache: TeacherCache, qrows: np.ndarray, cols: np.ndarray, cfg: SparseTrainConfig
                     ) -> torch.Tensor:
    bm25 = torch.from_numpy(cache.bm25[qrows[:, None], cols])
    dense = torch.from_numpy(cache.dense[qrows[:, None], cols])
    teachers = {"ensemble": [bm25, dense], "bm25": [bm25], "dense": [dense]}[cfg.distill]
    return ensemble_teacher_scores(teachers, scale=cfg.kd_scale)


def _ranking_loss(student: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
    if teacher is None:  # contrastive: the positive sits in column 0
        return F.cross_entropy(student, torch.zeros(student.shape[0], dtype=torch.long))
    return ensemble_kd_loss(student, teacher)


class _Checkpoint:
    """Atomic save/restore of training state in the work dir, keyed by the config and the data files'
    checksums (a rerun on edited data at the same path starts afresh)."""

    def __init__(self, work_dir: Path, cfg: SparseTrainConfig, data: dict[str, Any]) -> None:
        key = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "overwrite", "max_steps")}
        key["data_files"] = data
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.path = work_dir / f"checkpoint-{self.digest}.pt"

    def save(self, model: SparseModel, optim: torch.optim.Optimizer, step: int) -> None:
        """Batches derive from (seed, epoch, step), so model + optimizer + step resume exactly."""
        with atomic_path(self.path) as tmp:
            torch.save({"doc": model.doc.state_dict(), "optim": optim.state_dict(), "step": step}, tmp)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


def _optimizer(model: SparseModel, cfg: SparseTrainConfig) -> torch.optim.Optimizer:
    scalars = ("bias", "head", "lexical_scale")
    bias = [model.doc.bias] + ([model.doc.lexical_scale] if model.doc.lexical_scale is not None else [])
    head = [model.doc.head] if model.doc.head is not None else []
    rest = [p for n, p in model.doc.named_parameters() if p.requires_grad and n not in scalars]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": bias, "lr": cfg.bias_lr, "weight_decay": 0.0}]
    if head:
        groups.append({"params": head, "lr": cfg.head_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, weight_decay=0.01)


def prepare_data(cfg: SparseTrainConfig, work: Path, need_queries: int = 0) -> tuple[
        dict[str, Doc], dict[str, str], dict[str, dict[str, int]], list[str], list[str], TeacherCache]:
    """Corpus, queries (+ pseudo-queries), qrels, train/dev query ids and the teacher cache of ``cfg``.

    Fewer than ``need_queries`` training queries with a relevant judgement is an :class:`InputError`
    naming the qrels file, raised before the teachers run.
    """
    data = Path(cfg.data)
    corpus = load_corpus(data / "corpus.jsonl")
    queries = load_queries(data / "queries.jsonl")
    qrels_path = data / "qrels" / f"{cfg.split}.tsv"
    qrels = load_qrels(qrels_path, query_ids=set(queries), doc_ids=set(corpus))
    train_q, dev_q = split_train_dev(list(qrels), cfg.dev_fraction, cfg.seed)
    mined, mined_qrels = {q: queries[q] for q in qrels}, dict(qrels)
    if cfg.pseudo_queries == "titles":
        pseudo = title_queries(corpus)
        mined.update(pseudo)
        mined_qrels.update({q: {q.removeprefix(PSEUDO): 1} for q in pseudo})
        train_q = train_q + sorted(pseudo)
    usable = sum(any(g > 0 for g in mined_qrels[q].values()) for q in train_q)
    if usable < need_queries:
        raise InputError(qrels_path, f"{usable} training queries with a relevant judgement ({len(dev_q)} "
                                     f"held out for dev, dev_fraction={cfg.dev_fraction}); one step needs "
                                     f"queries_per_step={need_queries}")
    cache = mine_teachers(corpus, mined, mined_qrels, cfg.teachers, work, cfg.progress)
    return corpus, {**queries, **mined}, qrels, train_q, dev_q, cache


PSEUDO = "pseudo-title:"


def title_queries(corpus: dict) -> dict[str, str]:
    """One pseudo-query per document: its title (its own document is the positive).

    Unsupervised data augmentation from the corpus alone (no judgements): the teachers still score
    every pseudo-query's candidates, so distillation gets ~6x more queries on SciFact.
    """
    return {f"{PSEUDO}{d}": doc.title for d, doc in corpus.items() if len(doc.title.split()) >= 3}


@dataclass
class _DevSet:
    """What the per-epoch dev evaluation needs."""

    doc_ids: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    qids: list[str]
    history: list[dict] = field(default_factory=list)
    last: tuple[int, sp.csr_matrix] | None = None  # (step, corpus vectors) of the latest evaluation

    def run(self, model: SparseModel, hidden: HiddenCache, prior: sp.csr_matrix | None, epoch: int, step: int,
            progress: bool) -> None:
        from retrieval.training.dev_eval import encode_cached, evaluate_dev

        docs = encode_cached(model, hidden, progress=progress, prior=prior)
        self.last = (step, docs)
        metrics = evaluate_dev(model, docs, self.doc_ids, self.queries, self.qrels, self.qids)
        self.history.append({"epoch": epoch, "step": step, **{k: round(v, 4) for k, v in metrics.items()}})
        if progress:
            tqdm.write(f"dev after epoch {epoch} (step {step}): " + ", ".join(
                f"{k}={v:.4f}" for k, v in metrics.items()))


def train_sparse_encoder(cfg: SparseTrainConfig) -> Path:
    """Train per ``cfg`` and write the model artifact to ``cfg.out``; return its path."""
    out = Path(cfg.out)
    check_target(out, cfg.overwrite)  # before any work, not after training
    files = [Path(cfg.data) / n for n in ("corpus.jsonl", "queries.jsonl", f"qrels/{cfg.split}.tsv")]
    missing = [str(f.relative_to(cfg.data)) for f in files if not f.is_file()]
    if missing:  # checked before the work folder is made: a typo leaves nothing behind
        splits = ", ".join(available_splits(cfg.data)) or "none"
        raise InputError(cfg.data, f"not a BEIR folder with a {cfg.split!r} split (missing {missing}; "
                                   f"available splits: {splits})")
    work = Path(cfg.work_dir) if cfg.work_dir else out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()  # wall time covers everything: mining, caches, training, dev evals
    _seed_all(cfg.seed)
    device = cfg.device or default_device()
    corpus, queries, qrels, train_q, dev_q, cache = prepare_data(cfg, work, cfg.queries_per_step)
    dev = _DevSet(list(corpus), queries, qrels, dev_q) if cfg.dev_eval and dev_q else None
    contents = [doc_contents(corpus[d]) for d in corpus]
    model = SparseModel.from_minilm(cfg.encoder, device=device)
    model.query.fit_idf(contents)
    if not cfg.idf_aware:
        model.query.set_table(np.ones(model.query.vocab_size, np.float32))
    prior = None
    if cfg.encoder.lexical_prior:
        model.doc.fit_lexical_prior(contents)
        prior = model.doc.lexical_prior_matrix(contents)
    inputs = _DocInputs(build_hidden_cache(contents, model.doc, work, progress=cfg.progress), prior)
    data_files = fingerprint(files)
    stats = _train_loop(model, cache, inputs, queries, train_q, cfg, _Checkpoint(work, cfg, data_files), dev)
    model.extra = {"training": {**_jsonable(cfg), "data": str(Path(cfg.data).resolve()),  # stage 2 may run
                                "work_dir": str(work.resolve()),  # from another directory
                                "train_queries": len(train_q), "dev_queries": dev_q,
                                "wall_s": round(time.perf_counter() - start, 1), "device_used": str(device),
                                "torch_threads": torch.get_num_threads(), **stats,
                                "dev": dev.history if dev else []}}
    path = model.save(out, overwrite=cfg.overwrite, source={"data": str(cfg.data), "files": data_files})
    if dev is not None and dev.last is not None and dev.last[0] == stats["steps"]:
        from retrieval.training.dev_eval import document_cache, save_documents

        save_documents(document_cache(path, contents, work), dev.last[1])  # for the query-table stage
    return path


def _jsonable(cfg: SparseTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _query_vectors(model: SparseModel, texts: list[str]) -> torch.Tensor:
    ids, mask = model.query.tokenize(texts)
    with torch.no_grad():
        return model.query(ids, mask)


@dataclass
class _DocInputs:
    """What the training forward reads per document: cached hidden states (+ lexical prior rows)."""

    hidden: HiddenCache
    prior: sp.csr_matrix | None = None

    def weights(self, model: SparseModel, docs: np.ndarray) -> torch.Tensor:
        """Differentiable term weights [len(docs), V] of corpus rows ``docs``."""
        h, mask = self.hidden.batch(docs, model.doc.device)
        weights = train_weights(model.doc, h, mask)
        if self.prior is None:
            return weights
        return model.doc.with_prior(weights, torch.from_numpy(self.prior[docs].toarray()).to(weights.device))


def _step(model: SparseModel, cache: TeacherCache, inputs: _DocInputs, qtexts: list[str],
          qrows: np.ndarray, cols: np.ndarray, cfg: SparseTrainConfig, lam: float) -> dict[str, float]:
    b, c = cols.shape
    docs = cache.candidates[qrows[:, None], cols].reshape(-1)
    weights = inputs.weights(model, docs)                              # [B*C, V]
    q = _query_vectors(model, qtexts).to(weights.device)              # [B, V]
    student = torch.einsum("bv,bcv->bc", q, weights.view(b, c, -1)) / cfg.temperature
    teacher = None if cfg.distill == "none" else _teacher_targets(cache, qrows, cols, cfg)
    rank = _ranking_loss(student, teacher.to(student.device) if teacher is not None else None)
    flops = flops_loss(weights)
    loss = rank + lam * flops
    loss.backward()
    nnz = float((weights > 0).sum(dim=1).float().mean())
    return {"loss": loss.item(), "rank": rank.item(), "flops": flops.item(), "nnz": nnz}


def _train_loop(model: SparseModel, cache: TeacherCache, inputs: _DocInputs, queries: dict[str, str],
                train_q: list[str], cfg: SparseTrainConfig, ckpt: _Checkpoint, dev: _DevSet | None
                ) -> dict[str, float]:
    batcher = _Batcher(cache, train_q, cfg)
    optim = _optimizer(model, cfg)
    warmup = FlopsWarmup(cfg.flops_lambda, cfg.flops_warmup)
    total = batcher.steps_per_epoch() * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    step = 0
    state = ckpt.load()
    if state is not None and state["step"] > total:  # a longer run's: its state is past this run's end
        if cfg.progress:
            tqdm.write(f"{ckpt.path} is at step {state['step']}, past this run's {total}: training afresh")
        state = None
    if state is not None:
        model.doc.load_state_dict(state["doc"])
        optim.load_state_dict(state["optim"])
        step = state["step"]
        if cfg.progress:
            tqdm.write(f"resuming from {ckpt.path} at step {step} of {total}")
    model.doc.eval()  # no dropout anywhere: the cached lower layers were computed without it
    if dev is not None and step == 0 and cfg.dev_eval_start:
        dev.run(model, inputs.hidden, inputs.prior, 0, 0, cfg.progress)
    bar = tqdm(total=total, initial=step, desc="train sparse", disable=not cfg.progress)
    last: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        for batch_no, qrows in enumerate(batcher.epoch(np.random.default_rng([cfg.seed, epoch]))):
            global_step = epoch * batcher.steps_per_epoch() + batch_no
            if global_step < step:
                continue
            if global_step >= total:
                break
            rng = np.random.default_rng([cfg.seed, epoch, batch_no])
            cols = np.stack([batcher.sample(r, rng) for r in qrows])
            qtexts = [queries[cache.query_ids[r]] for r in qrows]
            optim.zero_grad(set_to_none=True)
            last = _step(model, cache, inputs, qtexts, qrows, cols, cfg, warmup(global_step))
            optim.step()
            step = global_step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", flops=f"{last['flops']:.2f}",
                            nnz=f"{last['nnz']:.0f}")
            if step % cfg.checkpoint_every == 0:
                ckpt.save(model, optim, step)
        due = (epoch + 1) % cfg.dev_eval_every == 0 or epoch + 1 == cfg.epochs or step == total
        if dev is not None and due and step == min(total, (epoch + 1) * batcher.steps_per_epoch()):
            dev.run(model, inputs.hidden, inputs.prior, epoch + 1, step, cfg.progress)
    bar.close()
    return {"steps": step, **{f"last_{k}": v for k, v in last.items()}}
