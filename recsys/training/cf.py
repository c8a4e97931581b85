"""Training collaborative-filtering models (MF-BPR, LightGCN, NeuMF) with BPR, dense or sparse (DSL).

One epoch visits every train (user, item) pair once in a seeded random order, each with one negative
item drawn uniformly from the items the user has not interacted with (vectorised rejection sampling);
mini-batches minimise BPR plus LightGCN's L2 on the batch's ego embeddings with Adam. With a
``density`` the model's :meth:`~recsys.models.cf.CFModel.sparse_parameters` are trained sparse by
:class:`recsys.dsl.DynamicSparsity` (DSL, Wang et al. WSDM 2024; ``static_sparsity`` keeps the initial
random masks: the baseline). Checkpoints (model, optimizer, masks, RNG states, history) are artifacts
written atomically after each epoch and a run resumes from the last one. Trained models are saved and
loaded as ``cf-model`` artifacts (:func:`save_model`, :func:`load_model`).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recsys.data.implicit import ImplicitDataset
from recsys.dsl import DSLConfig, DynamicSparsity
from recsys.id_vocab import IdVocab
from recsys.models.cf import CFModel
from recsys.models.lightgcn import LightGCN
from recsys.models.mf import MF
from recsys.models.neumf import NeuMF
from recsys.ranking import evaluate_ranking
from recsys.training.checkpoint_folder import check_checkpoint_folder, checkpoint_artifact
from sparsekit.artifacts import open_artifact, open_if_present, write_artifact
from sparsekit.bounds import at_least, count, positive
from sparsekit.device import default_device, resolve_device
from sparsekit.errors import ArtifactError, InputError

MODELS: dict[str, type[CFModel]] = {"mf": MF, "lightgcn": LightGCN, "neumf": NeuMF}
MODEL_FORMAT, MODEL_VERSION = "cf-model", 1
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "cf-checkpoint", 1
# Config fields that may differ between a checkpoint and the run resuming from it.
RUNTIME_FIELDS = frozenset({"eval_every", "eval_k", "checkpoint_dir", "checkpoint_every", "resume",
                            "time_budget_s", "device", "progress"})


def build_model(kind: str, num_users: int, num_items: int, interactions: sp.csr_matrix | None = None,
                **hparams: Any) -> CFModel:
    """A freshly initialised model of ``kind`` (``mf``, ``lightgcn`` or ``neumf``)."""
    if kind not in MODELS:
        raise InputError("model", f"unknown CF model {kind!r}; choose one of {sorted(MODELS)}")
    return MODELS[kind](num_users, num_items, interactions=interactions, **hparams)


@dataclass
class CFTrainConfig:
    """Model, optimisation, sparsity, evaluation and checkpoint settings of :func:`train_cf`."""

    model: str = "lightgcn"
    dim: int = 64
    layers: int = 3
    lr: float = 0.001
    batch_size: int = 2048
    epochs: int = 100
    weight_decay: float = 1e-4
    seed: int = 2020
    density: float | None = None
    static_sparsity: bool = False
    dsl_delta_t: int = 100
    dsl_accumulate_grad: bool = True
    prune_start: float = 0.5
    prune_end: float = 0.005
    eval_every: int = 0
    eval_k: int = 20
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = False
    time_budget_s: float | None = None
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InputError("model", f"unknown CF model {self.model!r}; choose one of {sorted(MODELS)}")
        count(self, 1, "dim", "batch_size", "epochs", "checkpoint_every", "dsl_delta_t", "eval_k")
        count(self, 0, "layers", "eval_every")
        if self.model == "neumf" and self.layers < 1:  # LightGCN with 0 layers is MF; NeuMF has no tower
            raise InputError("layers", f"NeuMF needs at least one MLP layer, got {self.layers}")
        at_least(self, 0, "weight_decay")
        positive(self, "lr", "time_budget_s")
        if self.density is not None and not 0.0 < self.density <= 1.0:
            raise InputError("density", f"must be in (0, 1] (None = dense), got {self.density}")
        if self.static_sparsity and self.density is None:
            raise InputError("static_sparsity", "needs a density")
        if self.resume and self.checkpoint_dir is None:
            raise InputError("resume", "needs a checkpoint_dir")

    def model_hparams(self) -> dict[str, Any]:
        """Constructor arguments of the configured model."""
        return {"dim": self.dim} if self.model == "mf" else {"dim": self.dim, "layers": self.layers}


class BPRSampler:
    """Epochs of (user, positive, negative) triples: every train pair once, uniform unseen negatives."""

    def __init__(self, train: sp.csr_matrix, seed: int) -> None:
        coo = sp.csr_matrix(train).tocoo()
        self.num_items = train.shape[1]
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self.keys = np.sort(self.users * self.num_items + self.items)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.users.size

    def _seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return self.keys[pos] == keys

    def negatives(self, users: np.ndarray, max_rounds: int = 100) -> np.ndarray:
        """One uniform item per user that the user has not interacted with (redrawn until unseen)."""
        neg = self.rng.integers(0, self.num_items, users.size)
        redraw = np.flatnonzero(self._seen(users, neg))
        for _ in range(max_rounds):
            if redraw.size == 0:
                break
            neg[redraw] = self.rng.integers(0, self.num_items, redraw.size)
            redraw = redraw[self._seen(users[redraw], neg[redraw])]
        return neg

    def epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = self.rng.permutation(self.users.size)
        users, pos = self.users[order], self.items[order]
        return users, pos, self.negatives(users)


@dataclass
class _Run:
    """Everything that evolves during training (what a checkpoint holds)."""

    model: CFModel
    optimizer: torch.optim.Optimizer
    sparsity: DynamicSparsity | None
    sampler: BPRSampler
    history: list[dict[str, Any]]
    epoch: int = 0


def _steps_per_epoch(data: ImplicitDataset, config: CFTrainConfig) -> int:
    return max(1, -(-int(data.train.nnz) // config.batch_size))


TABLES_PER_ID = {"mf": 1, "lightgcn": 1, "neumf": 2}  # NeuMF: GMF and MLP tables for users and items


def bytes_per_entry(config: CFTrainConfig) -> int:
    """Bytes one table entry costs in training: float32 weight, gradient and Adam's two moments, plus under
    DSL its bool mask and float keep factor and, when regrowth accumulates gradients, their float32 sum."""
    if config.density is None:
        return 16
    accumulate = config.dsl_accumulate_grad and not config.static_sparsity
    return 16 + 1 + 4 + (4 if accumulate else 0)


def _check_tables_fit(config: CFTrainConfig, data: ImplicitDataset, device: torch.device) -> None:
    """Refuse, by name, embedding tables that cannot fit: the ``(users + items) x dim`` rows of each table
    at :func:`bytes_per_entry`, against the device's free memory (on CUDA, with what torch's allocator
    holds but does not use). Ids index rows, so one raw id (999999999) where remapped ``0..n-1`` ids
    belong would otherwise size a table for a billion rows."""
    rows = TABLES_PER_ID.get(config.model, 1) * (data.num_users + data.num_items)
    need = bytes_per_entry(config) * rows * config.dim
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) \
            - torch.cuda.memory_allocated(device)
    else:
        free = psutil.virtual_memory().available
    if need > free:
        masks = " and the DSL masks" if config.density is not None else ""
        raise InputError("data", f"{data.num_users} users and {data.num_items} items (one more than the "
                                 f"largest ids) at dim {config.dim} need {need / 2**30:.1f} GiB for the "
                                 f"{config.model} tables, their gradients and Adam's state{masks}, more than "
                                 f"the {free / 2**30:.1f} GiB free; ids index embedding rows: remap them to "
                                 "0..n-1")


def _new_run(config: CFTrainConfig, data: ImplicitDataset, device: torch.device) -> _Run:
    _check_tables_fit(config, data, device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_users, data.num_items, data.train,
                        **config.model_hparams()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    sparsity = None
    if config.density is not None:
        total = config.epochs * _steps_per_epoch(data, config)
        dsl = DSLConfig(density=config.density, total_steps=total, delta_t=config.dsl_delta_t,
                        prune_start=config.prune_start, prune_end=config.prune_end,
                        dynamic=not config.static_sparsity, accumulate_grad=config.dsl_accumulate_grad,
                        seed=config.seed)
        sparsity = DynamicSparsity(model.sparse_parameters(), optimizer, dsl)
    return _Run(model, optimizer, sparsity, BPRSampler(data.train, config.seed), [])


def _train_epoch(run: _Run, config: CFTrainConfig, device: torch.device) -> dict[str, float]:
    run.model.train()
    users, pos, neg = (torch.from_numpy(a) for a in run.sampler.epoch())
    total = bpr_total = 0.0
    batches = range(0, users.numel(), config.batch_size)
    bar = tqdm(batches, desc=f"{config.model} epoch {run.epoch + 1}", disable=not config.progress,
               leave=False)
    for start in bar:
        batch = [t[start:start + config.batch_size].to(device) for t in (users, pos, neg)]
        loss, bpr = run.model.bpr_loss(*batch, weight_decay=config.weight_decay)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if run.sparsity is not None:
            run.sparsity.step()
        total += loss.item() * len(batch[0])
        bpr_total += bpr.item() * len(batch[0])
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return {"loss": total / users.numel(), "bpr": bpr_total / users.numel()}


def _evaluate(run: _Run, data: ImplicitDataset, config: CFTrainConfig) -> dict[str, float]:
    run.model.eval()
    metrics = evaluate_ranking(run.model.scorer(), data.train, data.test, k=config.eval_k,
                               device=run.model.device)
    return {f"recall@{config.eval_k}": metrics.recall, f"ndcg@{config.eval_k}": metrics.ndcg}


def train_cf(config: CFTrainConfig, data: ImplicitDataset) -> tuple[CFModel, list[dict[str, Any]]]:
    """Train ``config.model`` on ``data.train``; returns the model and one history record per epoch.

    A record has ``epoch``, ``loss``, ``bpr``, ``train_s`` (wall seconds of training, excluding
    evaluation), ``cpu_s`` (process CPU seconds of the same) and, every ``eval_every`` epochs,
    Recall/NDCG@``eval_k`` on ``data.test`` (train items excluded). Training stops early, after a whole
    epoch, once ``time_budget_s`` wall seconds of training are spent.
    """
    device = torch.device(resolve_device(config.device))
    if config.checkpoint_dir is not None:  # before an epoch of training, not at the first checkpoint
        check_checkpoint_folder(config.checkpoint_dir, config.resume)
    run = _new_run(config, data, device)
    identity = _data_identity(data) if config.checkpoint_dir else None  # once, not at every checkpoint
    if config.resume:
        _load_checkpoint(run, config, identity)
    spent = sum(record["train_s"] for record in run.history)
    budget = float("inf") if config.time_budget_s is None else config.time_budget_s
    while run.epoch < config.epochs and spent < budget:
        start, cpu_start = time.perf_counter(), time.process_time()
        record: dict[str, Any] = {"epoch": run.epoch + 1, **_train_epoch(run, config, device)}
        record["train_s"] = time.perf_counter() - start
        record["cpu_s"] = time.process_time() - cpu_start
        spent += record["train_s"]
        run.epoch += 1
        if config.eval_every and (run.epoch % config.eval_every == 0 or run.epoch == config.epochs
                                  or spent >= budget):
            record.update(_evaluate(run, data, config))
        run.history.append(record)
        if config.progress:
            tqdm.write(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in record.items()))
        last = run.epoch == config.epochs or spent >= budget
        if config.checkpoint_dir and (run.epoch % config.checkpoint_every == 0 or last):
            _save_checkpoint(run, config, identity)
    run.model.eval()
    return run.model, run.history


# ---- checkpoints ------------------------------------------------------------------------------------


def checkpoint_path(config: CFTrainConfig) -> Path:
    """Where :func:`train_cf` keeps its checkpoint artifact."""
    if config.checkpoint_dir is None:
        raise InputError("checkpoint_dir", "not set")
    return checkpoint_artifact(config.checkpoint_dir)


def _identity(config: CFTrainConfig) -> dict[str, Any]:
    """The config fields a checkpoint must share with the run resuming it. A dense run's ``epochs`` is
    not one (no schedule depends on it: a finished run can be extended); DSL's prune schedule spans all
    the epochs, so there it is."""
    skip = RUNTIME_FIELDS | ({"epochs"} if config.density is None else set())
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _data_identity(data: ImplicitDataset) -> dict[str, Any]:
    """Shape and a digest of the training interactions: a checkpoint resumes only on the same data."""
    train = data.train.tocsr()
    digest = hashlib.sha256(np.ascontiguousarray(train.indptr, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(train.indices, dtype=np.int64).tobytes())
    return {"num_users": data.num_users, "num_items": data.num_items, "train_nnz": int(train.nnz),
            "train_sha256": digest.hexdigest()}


def _save_checkpoint(run: _Run, config: CFTrainConfig, data_identity: dict[str, Any] | None) -> None:
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "sparsity": run.sparsity.state_dict() if run.sparsity else None,
        "sampler_rng": run.sampler.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": run.history,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    params = {"config": _identity(config), "data": data_identity, "epoch": run.epoch}
    with write_artifact(checkpoint_path(config), CHECKPOINT_FORMAT, CHECKPOINT_VERSION, params=params,
                        overwrite=True) as writer:
        writer.path("state.pt").write_bytes(buffer.getvalue())
        writer.counts["epoch"] = run.epoch


def _load_checkpoint(run: _Run, config: CFTrainConfig, data_identity: dict[str, Any] | None) -> None:
    path = checkpoint_path(config)
    manifest = open_if_present(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    if manifest is None:  # resume asked for, nothing to resume from: say so, then train from the start
        if config.progress:
            tqdm.write(f"no checkpoint at {path} yet: training from the first epoch")
        return
    diff = sorted(k for k, v in _identity(config).items() if manifest.params["config"].get(k) != v)
    if diff:
        raise ArtifactError(path, f"checkpoint was written with a different config (fields {diff})")
    stored = manifest.params.get("data")  # absent in checkpoints written before it was recorded
    if stored is not None and stored != data_identity:
        raise ArtifactError(path, f"checkpoint was trained on other data ({stored['num_users']} users x "
                                  f"{stored['num_items']} items, {stored['train_nnz']} train interactions); "
                                  "resuming would mix them: use another --checkpoint-dir")
    # on the CPU: the RNG state must stay a CPU tensor; the loads below move weights to the model
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as exc:  # shapes of other data (a checkpoint from before the data was recorded)
        raise ArtifactError(path, f"checkpoint does not fit this data: {exc}") from exc
    run.optimizer.load_state_dict(state["optimizer"])
    if run.sparsity is not None:
        run.sparsity.load_state_dict(state["sparsity"])
    run.sampler.rng.bit_generator.state = state["sampler_rng"]
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():  # absent in checkpoints before it was saved
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.history = list(state["history"])
    run.epoch = int(manifest.params["epoch"])


# ---- trained-model artifacts --------------------------------------------------------------------------


def save_model(model: CFModel, path: str | Path, overwrite: bool = False,
               params: dict[str, Any] | None = None, ids: IdVocab | None = None) -> Path:
    """Write ``model`` (weights as ``.npy``, train interactions as scipy ``.npz``, raw ``ids`` when given)
    as a ``cf-model``."""
    meta = {"kind": model.kind, "hparams": model.hparams(), "num_users": model.num_users,
            "num_items": model.num_items, **(params or {})}
    with write_artifact(path, MODEL_FORMAT, MODEL_VERSION, params=meta, overwrite=overwrite) as writer:
        if ids is not None:
            ids.write(writer)
        for name, tensor in model.state_dict().items():
            np.save(writer.path(f"{name}.npy"), tensor.detach().cpu().numpy())
        sp.save_npz(writer.path("interactions.npz"), model.interactions)
        writer.counts["parameters"] = sum(t.numel() for t in model.state_dict().values())
        writer.counts["interactions"] = int(model.interactions.nnz)
    return Path(path)


def load_model(path: str | Path, device: str | None = None) -> CFModel:
    """Read a ``cf-model`` artifact back into its model class (on ``device``, default CUDA if present)."""
    path = Path(path)
    manifest = open_artifact(path, format=MODEL_FORMAT, version=MODEL_VERSION)
    p = manifest.params
    model = build_model(p["kind"], p["num_users"], p["num_items"], sp.load_npz(path / "interactions.npz"),
                        **p["hparams"])
    state = {name: torch.from_numpy(np.load(path / f"{name}.npy")) for name in model.state_dict()}
    model.load_state_dict(state)
    return model.to(device or default_device()).eval()
