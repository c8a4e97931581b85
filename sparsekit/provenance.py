"""Which code produced a result: the git commit of the checkout, recorded by every benchmark result and by
each run of the embedding-compression sweep (so a resumed sweep shows which commits its runs came from)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def commit() -> str:
    """The commit the code runs from: ``$SPARSEKIT_COMMIT`` when set (a GPU host's copied tree, whose
    ``.git`` may be stale), else ``git rev-parse HEAD``, else ``"uncommitted"``. Read once per process, at
    the first call: a long job calls it when it starts, so commits made while it runs are not
    attributed to it."""
    if os.environ.get("SPARSEKIT_COMMIT"):
        return os.environ["SPARSEKIT_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
