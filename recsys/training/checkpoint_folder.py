"""The checkpoint folder of a training run (``checkpoint_dir`` / ``--checkpoint-dir``), as CF and CTR
training share it: checked before any training, so a bad path fails at once and not at the first
checkpoint, and a checkpoint that a fresh start will replace is announced."""

from __future__ import annotations

import warnings
from pathlib import Path

from sparsekit.errors import InputError

ARTIFACT = "checkpoint"  # the checkpoint artifact's name inside the folder


def checkpoint_artifact(folder: str | Path) -> Path:
    """Where a run keeps its checkpoint artifact inside ``folder``."""
    return Path(folder) / ARTIFACT


def check_checkpoint_folder(folder: str | Path, resume: bool) -> None:
    """Refuse a ``folder`` that cannot be created (a file in the way); warn when a checkpoint is there
    and ``resume`` is off, since this run's first checkpoint replaces it."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError("checkpoint_dir", f"{folder} cannot be a checkpoint folder: {existing} is a file")
    if not resume and checkpoint_artifact(folder).exists():
        warnings.warn(f"{checkpoint_artifact(folder)}: starting over without resume; this run's first "
                      "checkpoint replaces the one there (resume=True, --resume, continues it instead)",
                      stacklevel=3)
