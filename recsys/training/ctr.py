"""Training, evaluation and saving of CTR models (DLRM, Wide&Deep, DeepFM, DCNv2).

The BARS / FuxiCTR protocol (Zhu et al., "BARS: Towards Open Benchmarking for Recommender Systems",
SIGIR 2022): Adam, binary cross-entropy on logits, evaluation on the validation split after every
epoch, early stopping on validation AUC (scikit-learn ``roc_auc_score``) with ``patience`` epochs (never
before ``min_epochs``), and the best epoch's weights restored. Epochs in which the embedding table is
still searching or pruning (``EmbeddingTable.settled`` is False) are evaluated but neither kept nor
counted toward patience: the restored checkpoint is always one whose table computes what it will
serve. A table compressed only when finalized (``EmbeddingTable.lossy_finalize``, e.g. dedup) is
validated every epoch through a finalized copy, for the same reason. ``embedding_l2`` adds an L2
penalty on the embedding rows each batch touches
(``embedding_l2 * sum ||e||^2 / batch``; FuxiCTR regularizes the whole table instead).
Seeded: same config and data, same model (on CPU). The defaults (lr 1e-2, ``embedding_l2`` 1e-2,
dropout 0.2, batch 1024) were picked on the Frappe validation split: at BARS' lr 1e-3 the deep tower
overfits before the FM/cross interactions are learnt (val AUC 0.930 vs 0.952 for DeepFM).

Models are saved as artifacts (format ``ctr-model``): ``model.pt`` (state dict, loaded with
``weights_only=True``), ``schema.json`` (the data's fields, so a server can encode raw values with
:meth:`recsys.data.ctr.CTRSchema.encode`) and, in the manifest, the architecture, every embedding
table's config and any low-rank compression spec (:mod:`recsys.lowrank`), so compressed models
round-trip too.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm

from embeddings.full import FullTable
from embeddings.table import EmbeddingTable, build_table
from recsys.data.ctr import CTRDataset, CTRSchema, CTRSplit
from recsys.lowrank import restructure
from recsys.models.ctr.dcnv2 import DCNv2
from recsys.models.ctr.deepfm import DeepFM
from recsys.models.ctr.dlrm import DLRM
from recsys.models.ctr.wdl import WIDE, WideDeep
from recsys.training.checkpoint_folder import check_checkpoint_folder
from recsys.training.ctr_checkpoint import CTRRun, load_checkpoint, run_identity, save_checkpoint
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.best_state import BestState
from sparsekit.bounds import at_least, count, each_count, within
from sparsekit.device import default_device
from sparsekit.errors import ArtifactError, InputError, TrainingDiverged

if TYPE_CHECKING:
    from recsys.data.ctr_table import TableCTRConfig

FORMAT, VERSION = "ctr-model", 1
CTR_MODELS: dict[str, type[nn.Module]] = {m.name: m for m in (DLRM, WideDeep, DeepFM, DCNv2)}


@dataclass
class CTRTrainConfig:
    """What to train and how; ``model`` is one of ``dlrm``, ``wdl``, ``deepfm``, ``dcnv2``."""

    model: str = "deepfm"
    embed_dim: int = 16
    hidden: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    cross_layers: int = 3
    wide: str = "table"  # wdl / deepfm's first-order part: a dim-1 table, or "projected" from e (WideDeep)
    lr: float = 1e-2
    embedding_l2: float = 1e-2
    batch_size: int = 1024
    max_epochs: int = 30
    patience: int = 2
    min_epochs: int = 1  # never stop before this epoch (a warm-up for tables whose AUC plateaus early)
    eval_batch_size: int = 8192
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    checkpoint_dir: str | None = None  # checkpoint after every epoch here (recsys.training.ctr_checkpoint)
    resume: bool = False  # continue from checkpoint_dir's checkpoint (a fresh start when there is none)

    def __post_init__(self) -> None:
        if self.model not in CTR_MODELS:
            raise InputError("model", f"unknown CTR model {self.model!r} (known: {sorted(CTR_MODELS)})")
        count(self, 1, "embed_dim", "batch_size", "max_epochs", "patience", "min_epochs",
                 "eval_batch_size", "threads")
        count(self, 0, "cross_layers")
        if self.wide not in WIDE:
            raise InputError("wide", f"one of {WIDE}, got {self.wide!r}")
        if self.wide != "table" and not issubclass(CTR_MODELS[self.model], WideDeep):
            raise InputError("wide", f"{self.model} has no first-order part: only wdl and deepfm take "
                                     f"wide={self.wide!r}")
        at_least(self, 0, "lr", "embedding_l2")  # lr 0 freezes the model
        each_count(self, 1, "hidden")
        within(self, 0.0, 1.0, "dropout", open_high=True)
        if self.min_epochs > self.max_epochs:
            raise InputError("min_epochs", f"{self.min_epochs} exceeds max_epochs {self.max_epochs}")
        if self.resume and self.checkpoint_dir is None:
            raise InputError("resume", "needs a checkpoint_dir")


@dataclass
class CTRTrainResult:
    """The best model (its weights restored), per-epoch history and final metrics."""

    model: nn.Module
    history: list[dict[str, float]]
    metrics: dict[str, float]
    best_epoch: int
    config: CTRTrainConfig = field(default_factory=CTRTrainConfig)


def build_ctr_model(
    config: CTRTrainConfig, field_dims: list[int], table: EmbeddingTable | None = None
) -> nn.Module:
    """The model of ``config`` over ``table`` (default: a field-aware :class:`FullTable` of ``embed_dim``)."""
    if config.model not in CTR_MODELS:
        raise InputError("model", f"unknown CTR model {config.model!r} (known: {sorted(CTR_MODELS)})")
    table = table or FullTable(sum(field_dims), config.embed_dim, field_dims=field_dims)
    kwargs: dict[str, Any] = {"hidden": tuple(config.hidden), "dropout": config.dropout}
    if config.model == "dcnv2":
        kwargs["cross_layers"] = config.cross_layers
    if config.wide != "table":
        kwargs["wide"] = config.wide
    return CTR_MODELS[config.model](table, len(field_dims), **kwargs)


def batches(
    features: np.ndarray,
    batch_size: int,
    labels: np.ndarray | None = None,
    device: str = "cpu",
    order: np.ndarray | None = None,
) -> Iterator[Any]:
    """Feature-id tensors (with labels, when given) of ``batch_size`` rows, in ``order`` if given."""
    index = np.arange(len(features)) if order is None else order
    for lo in range(0, len(index), batch_size):
        rows = index[lo : lo + batch_size]
        ids = torch.from_numpy(np.ascontiguousarray(features[rows])).to(device)
        yield ids if labels is None else (ids, torch.from_numpy(labels[rows]).to(device))


@torch.no_grad()
def predict(
    model: nn.Module, features: np.ndarray, batch_size: int = 8192, device: str | None = None
) -> np.ndarray:
    """Click probabilities of ``features`` rows (eval mode)."""
    device = device or _model_device(model)
    was_training = model.training
    model.eval()
    out = [torch.sigmoid(model(ids)).cpu() for ids in batches(features, batch_size, device=device)]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _model_device(model: nn.Module) -> str:
    return str(next(iter(model.parameters())).device)


def evaluate_ctr(model: nn.Module, split: CTRSplit, batch_size: int = 8192) -> dict[str, float]:
    """AUC, logloss and inference samples/s on one split; AUC NaN and logloss inf when a prediction is not
    finite (a diverged model: such an epoch counts toward patience and is never kept)."""
    start = time.perf_counter()
    probs = predict(model, split.features, batch_size)
    seconds = time.perf_counter() - start
    speed = len(split) / max(seconds, 1e-9)
    if not np.isfinite(probs).all():
        return {"auc": math.nan, "logloss": math.inf, "inference_samples_per_s": speed}
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(split.labels, probs)),
        "logloss": float(log_loss(split.labels, clipped)),
        "inference_samples_per_s": speed,
    }


def _embedding_penalty(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    rows = model.embedding.lookup(ids)
    return rows.pow(2).sum() / ids.shape[0]


def _train_epoch(
    model: nn.Module,
    optim: torch.optim.Optimizer,
    data: CTRSplit,
    config: CTRTrainConfig,
    rng: np.random.Generator,
    device: str,
    bar: tqdm,
    steps: tuple[int, int],
) -> tuple[float, float]:
    """One pass over shuffled train rows; returns (mean loss, samples/s). ``steps`` is (steps done before
    this epoch, total steps of the run), passed to the table's training hooks."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    table: EmbeddingTable = model.embedding
    total, start = 0.0, time.perf_counter()
    step, total_steps = steps
    for ids, labels in batches(
        data.features, config.batch_size, data.labels, device, rng.permutation(len(data))
    ):
        loss = loss_fn(model(ids), labels)
        if config.embedding_l2 > 0:
            loss = loss + config.embedding_l2 * _embedding_penalty(model, ids)
        extra = table.penalty()
        if extra is not None:
            loss = loss + extra
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1
        table.after_step(step, total_steps)
        total += loss.item() * len(labels)
        bar.update(len(labels))
    return total / len(data), len(data) / (time.perf_counter() - start)


def train_ctr(
    config: CTRTrainConfig, data: CTRDataset, table: EmbeddingTable | None = None
) -> CTRTrainResult:
    """Train ``config.model`` on ``data.train`` with early stopping on validation AUC.

    The model is built after ``torch.manual_seed(config.seed)``; a ``table`` passed in was initialised
    before that, from the caller's random state, so seed before building it (as :mod:`embeddings.sweep`
    does) when runs must be reproducible.

    Returns the best epoch's model (in eval mode), the history (train loss, val AUC/logloss and speeds per
    epoch) and metrics: ``val_auc``, ``val_logloss``, ``test_auc``, ``test_logloss``,
    ``train_samples_per_s`` (mean over epochs) and ``inference_samples_per_s`` (on test).
    """
    if len(data.train) == 0 or len(data.val) == 0:
        raise InputError("data", "train and validation splits must be non-empty")
    if config.threads is not None:
        torch.set_num_threads(config.threads)  # process-wide: 1 avoids thread thrashing on busy CPUs
    if config.checkpoint_dir is not None:
        check_checkpoint_folder(config.checkpoint_dir, config.resume)
    torch.manual_seed(config.seed)
    device = config.device or default_device()
    model = build_ctr_model(config, data.field_dims, table).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    run = CTRRun(model, optimizer, np.random.default_rng(config.seed), BestState(model))
    identity = run_identity(config, run, data) if config.checkpoint_dir is not None else {}
    per_epoch = math.ceil(len(data.train) / config.batch_size)
    if config.resume:
        load_checkpoint(run, config, identity)
        model.embedding.resume_at(run.epoch * per_epoch, config.max_epochs * per_epoch)
    bar = tqdm(
        total=config.max_epochs * len(data.train),
        initial=run.epoch * len(data.train),
        desc=f"train {config.model}",
        unit="row",
        disable=not config.progress,
    )
    while not run.done:
        _run_epoch(run, data, config, device, bar, per_epoch)
        if config.checkpoint_dir is not None:
            save_checkpoint(run, config, identity)
    bar.close()
    model, best = run.model, run.best
    if not best.found:
        raise RuntimeError(f"the {model.embedding.kind} table never finished its search phase in "
                           f"{config.max_epochs} epochs: raise max_epochs or shorten its search")
    if math.isnan(best.score):
        raise TrainingDiverged(f"{config.model} with the {model.embedding.kind} table predicted non-finite "
                               f"click probabilities at every validated epoch (lr {config.lr:g}): lower lr")
    best.restore()
    model.embedding = model.embedding.finalize()  # the serving table (e.g. pruned rows packed)
    model.eval()
    return CTRTrainResult(model, run.history, _final_metrics(model, data, run.history, config), best.step,
                          config)


def _run_epoch(
    run: CTRRun, data: CTRDataset, config: CTRTrainConfig, device: str, bar: tqdm, per_epoch: int
) -> None:
    """Train and validate epoch ``run.epoch + 1``, then update early stopping (``run.done`` when it ends
    the run, or when this was the last epoch)."""
    model, epoch = run.model, run.epoch + 1
    steps = ((epoch - 1) * per_epoch, config.max_epochs * per_epoch)
    loss, speed = _train_epoch(model, run.optimizer, data.train, config, run.rng, device, bar, steps)
    val = evaluate_ctr(_as_served(model), data.val, config.eval_batch_size)
    settled = model.embedding.settled
    run.history.append({"epoch": epoch, "train_loss": loss, "train_samples_per_s": speed,
                        "val_auc": val["auc"], "val_logloss": val["logloss"], "settled": settled})
    bar.set_postfix(val_auc=f"{val['auc']:.4f}")
    run.epoch = epoch
    run.done = epoch >= config.max_epochs
    if not settled:  # still searching / pruning: not the model that will serve
        return
    if run.best.offer(val["auc"], epoch):
        run.waited = 0
    else:
        run.waited += 1
        run.done |= run.waited >= config.patience and epoch >= config.min_epochs


def _as_served(model: nn.Module) -> nn.Module:
    """The model as it will serve: a copy holding the finalized table when finalizing changes the
    table's outputs (``EmbeddingTable.lossy_finalize``), else the model itself."""
    if not model.embedding.lossy_finalize:
        return model
    served = copy.deepcopy(model)
    served.embedding = served.embedding.finalize()
    return served


def _final_metrics(
    model: nn.Module, data: CTRDataset, history: list[dict[str, float]], config: CTRTrainConfig
) -> dict[str, float]:
    val = evaluate_ctr(model, data.val, config.eval_batch_size)
    metrics = {
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "train_samples_per_s": float(np.mean([h["train_samples_per_s"] for h in history])),
    }
    if len(data.test):
        test = evaluate_ctr(model, data.test, config.eval_batch_size)
        metrics.update(
            test_auc=test["auc"],
            test_logloss=test["logloss"],
            inference_samples_per_s=test["inference_samples_per_s"],
        )
    return metrics


def _tables(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: m.config() for name, m in model.named_children() if isinstance(m, EmbeddingTable)}


def save_ctr_model(
    model: nn.Module,
    path: str | Path,
    *,
    schema: CTRSchema | None = None,
    config: CTRTrainConfig | None = None,
    metrics: dict[str, Any] | None = None,
    table: TableCTRConfig | None = None,
    data: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (compressed or not) as a ``ctr-model`` artifact directory; returns its path.

    ``table`` records how a table file of your own was read (label column, header), so that
    ``compress ctr`` reads its calibration table the same way without being told again; ``data``
    (:func:`recsys.data.ctr.data_identity`) records what the model was trained on."""
    name = getattr(model, "name", None)
    if name not in CTR_MODELS:
        raise InputError("model", f"not a CTR model of this package: {type(model).__name__}")
    params = {
        "model": name,
        "hparams": model.hparams,
        "tables": _tables(model),
        "lowrank": getattr(model, "lowrank_spec", None),
        "config": asdict(config) if config else None,
        "metrics": metrics or {},
        "data_table": asdict(table) if table else None,
        "data": data,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with write_artifact(path, FORMAT, VERSION, params=params, overwrite=overwrite) as out:
        torch.save(state, out.path("model.pt"))
        if schema is not None:
            out.path("schema.json").write_text(json.dumps(schema.to_dict()))
        out.counts["parameters"] = sum(v.numel() for v in state.values())
    return Path(path)


@dataclass
class CTRArtifact:
    """A loaded CTR model (eval mode, on CPU), the schema it was trained on (if saved) and its manifest."""

    model: nn.Module
    schema: CTRSchema | None
    params: dict[str, Any]


def load_ctr_model(path: str | Path, device: str = "cpu") -> CTRArtifact:
    """Read a :func:`save_ctr_model` artifact (checksums verified), rebuilding any compression."""
    path = Path(path)
    manifest = open_artifact(path, FORMAT, VERSION)
    params = manifest.params
    try:
        tables = {name: build_table(cfg) for name, cfg in params["tables"].items()}
        model = CTR_MODELS[params["model"]](**tables, **params["hparams"])
        if params.get("lowrank"):
            restructure(model, params["lowrank"])
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, InputError) as exc:
        raise ArtifactError(path, f"cannot rebuild the model: {exc}") from exc
    schema_file = path / "schema.json"
    schema = CTRSchema.from_dict(json.loads(schema_file.read_text())) if schema_file.is_file() else None
    return CTRArtifact(model.to(device).eval(), schema, params)
