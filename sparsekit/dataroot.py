"""Where the real datasets live.

Tests and benchmarks read ``../shared/data`` relative to the repository (the layout on developer
and CI machines); the ``SPARSEKIT_DATA`` environment variable overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The dataset root: ``$SPARSEKIT_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("SPARSEKIT_DATA")
    return Path(env) if env else _REPO_ROOT.parent / "shared" / "data"


def dataset_path(name: str) -> Path | None:
    """The folder of dataset ``name`` under the data root, or ``None`` when it is absent."""
    path = data_root() / name
    return path if path.is_dir() else None
