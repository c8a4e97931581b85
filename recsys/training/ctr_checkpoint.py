"""Checkpoints of a CTR training run (:func:`recsys.training.ctr.train_ctr`), so a killed run resumes
where its last finished epoch left off and ends with the model an uninterrupted run would have.

A checkpoint is an artifact directory (format ``ctr-checkpoint``, written atomically after every epoch:
a kill mid-write leaves the previous one) holding everything that evolves during training: the model's
state dict (the embedding table's buffers included), Adam's state, the row-shuffling generator, torch's
random state (dropout, stochastic rounding), the early-stopping state (best validation AUC, its epoch
and weights, epochs waited) and the history. Its manifest records the config (runtime fields aside),
the embedding table's config and a digest of the train and validation rows: a checkpoint resumes only
the same run on the same data, and anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from recsys.training.checkpoint_folder import checkpoint_artifact
from sparsekit.artifacts import open_if_present, write_artifact
from sparsekit.best_state import BestState
from sparsekit.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from recsys.data.ctr import CTRDataset
    from recsys.training.ctr import CTRTrainConfig

FORMAT, VERSION = "ctr-checkpoint", 1
# Config fields that may differ between a checkpoint and the run resuming it: they change the schedule of
# nothing. (Another eval batch size, thread count or device can move results in the last float bits, and
# a CUDA run resumed on CPU draws dropout from another random stream: the resumed run is then no longer
# bit-identical to an uninterrupted one.)
RUNTIME_FIELDS = frozenset({"eval_batch_size", "device", "threads", "progress", "checkpoint_dir", "resume"})
# Config fields added after checkpoints were first written, with the value that reproduces the behaviour
# of the versions before them: a checkpoint that lacks such a field was trained with that value.
ADDED_FIELDS: dict[str, Any] = {"wide": "table"}


@dataclass
class CTRRun:
    """Everything that evolves while :func:`~recsys.training.ctr.train_ctr` runs (what a checkpoint
    holds): ``epoch`` is the last finished epoch, ``done`` whether training has ended (early stop or the
    last epoch)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    best: BestState
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0
    waited: int = 0
    done: bool = False


def checkpoint_path(config: CTRTrainConfig) -> Path:
    """Where the run of ``config`` keeps its checkpoint artifact."""
    if config.checkpoint_dir is None:
        raise InputError("checkpoint_dir", "not set")
    return checkpoint_artifact(config.checkpoint_dir)


def run_identity(config: CTRTrainConfig, run: CTRRun, data: CTRDataset) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it (JSON values, as the manifest stores them)."""
    settings = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS}
    table = run.model.embedding.config()
    data_id: dict[str, Any] = {"field_dims": list(data.field_dims)}
    for name, rows in (("train", data.train), ("val", data.val)):  # val decides early stopping
        digest = hashlib.sha256(np.ascontiguousarray(rows.features).tobytes())
        digest.update(np.ascontiguousarray(rows.labels).tobytes())
        data_id |= {f"{name}_rows": len(rows), f"{name}_sha256": digest.hexdigest()}
    return json.loads(json.dumps({"config": settings, "table": table, "data": data_id}))


def save_checkpoint(run: CTRRun, config: CTRTrainConfig, identity: dict[str, Any]) -> None:
    """Write ``run`` as the checkpoint of ``config`` (atomically replacing the previous one)."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": run.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "best": run.best.state_dict(),
        "history": run.history,
        "waited": run.waited,
        "done": run.done,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with write_artifact(checkpoint_path(config), FORMAT, VERSION, params={**identity, "epoch": run.epoch},
                        overwrite=True) as writer:
        writer.path("state.pt").write_bytes(buffer.getvalue())
        writer.counts["epoch"] = run.epoch


def load_checkpoint(run: CTRRun, config: CTRTrainConfig, identity: dict[str, Any]) -> None:
    """Restore ``run`` from the checkpoint of ``config`` (checksums verified); no checkpoint yet leaves
    ``run`` at its start, so ``resume`` can be passed from the first launch on."""
    path = checkpoint_path(config)
    manifest = open_if_present(path, FORMAT, VERSION)
    if manifest is None:  # resume asked for, nothing to resume from: say so, then train from the start
        if config.progress:
            tqdm.write(f"no checkpoint at {path} yet: training from the first epoch")
        return
    for part, what in (("config", "a different config"), ("table", "a different embedding table"),
                       ("data", "other training data")):
        stored, ours = manifest.params.get(part) or {}, identity[part]
        if part == "config":
            stored = {**ADDED_FIELDS, **stored}
        diff = sorted(k for k in stored.keys() | ours.keys() if stored.get(k) != ours.get(k))
        if diff:
            raise ArtifactError(path, f"checkpoint was written with {what} (fields {diff}); resuming would "
                                      "mix two runs: use another checkpoint_dir (--checkpoint-dir)")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.best.load_state_dict(state["best"])
    run.history, run.waited, run.done = state["history"], int(state["waited"]), bool(state["done"])
    run.epoch = int(manifest.params["epoch"])
