"""Fixtures for the kernel tests: run a script with the Triton kernels interpreted on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_interpreted() -> Callable[[str], Any]:
    """``run(script)``: run ``script`` in a fresh interpreter under ``TRITON_INTERPRET=1`` (the flag must be
    set before triton is imported, hence the subprocess) and return the JSON its last stdout line prints."""
    pytest.importorskip("triton")

    def run(script: str) -> Any:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
        proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
