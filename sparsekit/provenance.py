"""Which code produced a result: the git commit of the checkout, recorded by every benchmark result and by
each run of the embedding-compression sweep (so a resumed sweep shows which commits its runs came from).
A checkout whose tracked files (results under ``benchmarks/results`` aside) differ from that commit is marked
``<sha>+dirty.<digest>``: the digest is the SHA-256 (first 12 hex digits) of ``git diff HEAD``, so the result
is not taken for the commit's own."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def commit() -> str:
    """The commit the code runs from: ``$SPARSEKIT_COMMIT`` when set (a GPU host's copied tree, whose
    ``.git`` may be stale), else :func:`describe` of this checkout, else ``"uncommitted"``. Read once per
    process, at the first call: a long job calls it when it starts, so commits made while it runs are not
    attributed to it."""
    if os.environ.get("SPARSEKIT_COMMIT"):
        return os.environ["SPARSEKIT_COMMIT"]
    try:
        return describe(ROOT)
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


# tracked outputs, not code: a results file rewritten (e.g. by another benchmark's --rescore) and not yet
# committed does not make the code that runs next differ from its commit
OUTPUTS = ("benchmarks/results",)


def describe(root: Path) -> str:
    """``git rev-parse HEAD`` of ``root``, with ``+dirty.<digest of git diff HEAD>`` when tracked files
    were changed (untracked files and the tracked results under :data:`OUTPUTS` do not count; no external
    diff driver or textconv, so the digest depends on the changes alone)."""
    def git(*args: str) -> bytes:
        return subprocess.check_output(["git", *args], cwd=root, stderr=subprocess.DEVNULL)

    head = git("rev-parse", "HEAD").decode().strip()
    diff = git("diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--", ".",
               *(f":(exclude){p}" for p in OUTPUTS))
    return f"{head}+dirty.{hashlib.sha256(diff).hexdigest()[:12]}" if diff else head
