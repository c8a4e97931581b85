"""What every benchmark result records about where and from what it ran: the machine, the git commit
(:func:`sparsekit.provenance.commit`) and the command, in the ../shared/docs/DESIGN.md §7 envelope that
:class:`BenchmarkRun` writes."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsekit import provenance
from sparsekit.atomic import write_text_atomic


def machine() -> dict[str, Any]:
    """CPU model, core count, GPU name (nvidia-smi, else None) and RAM bytes."""
    cpu = platform.processor() or platform.machine()
    ram = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except OSError:
        pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "ram": ram}


def write_result(path: Path, result: dict[str, Any], indent: int = 2) -> None:
    """Write ``result`` as JSON to ``path`` atomically (parent created), so a killed job never leaves a
    half-written file: see :func:`sparsekit.atomic.atomic_path`."""
    write_text_atomic(path, json.dumps(result, indent=indent, default=float) + "\n")


def rescore(path: Path, acceptance: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> dict[str, Any]:
    """Rebuild the acceptance entries of the results file at ``path`` from its stored metrics (after a
    criterion's label or rule changed), recording the commit that did it as ``rescored_commit``."""
    stored = json.loads(path.read_text())
    stored["acceptance"] = acceptance(stored["metrics"])
    stored["rescored_commit"] = provenance.commit()
    write_result(path, stored)
    return stored


@dataclass
class BenchmarkRun:
    """One run of ``benchmarks/<script>.py``. Created when the run starts: the clock starts and the git
    commit is read then, so commits made while a long run goes on are not attributed to it.
    :meth:`report` writes the ../shared/docs/DESIGN.md §7 envelope of the result."""

    name: str
    script: str = ""
    start: float = field(default_factory=time.perf_counter)
    commit: str = field(default_factory=provenance.commit)

    def envelope(self, metrics: dict[str, Any], acceptance: list[dict[str, Any]],
                 **extra: list[Any]) -> dict[str, Any]:
        """``benchmark`` (``name``), ``commit``, ``machine``, ``command`` (``python
        benchmarks/<script>.py`` and the arguments), ``wall_s`` so far, ``metrics``, ``acceptance``, and
        any non-empty ``extra`` lists (``findings``: measured effects that are not the issue's criteria;
        ``caveats``: what a reader must know about how the numbers were produced)."""
        script = self.script or self.name
        return {"benchmark": self.name, "commit": self.commit, "machine": machine(),
                "command": "python " + shlex.join([f"benchmarks/{script}.py", *sys.argv[1:]]),
                "wall_s": round(time.perf_counter() - self.start, 1), "metrics": metrics,
                "acceptance": acceptance, **{k: v for k, v in extra.items() if v}}

    def report(self, metrics: dict[str, Any], acceptance: list[dict[str, Any]], out: Path | None,
               indent: int = 2, **extra: list[Any]) -> dict[str, Any]:
        """The :meth:`envelope`, written atomically to ``out`` (unless ``None``) and printed as one JSON
        line."""
        result = self.envelope(metrics, acceptance, **extra)
        if out is not None:
            write_result(out, result, indent=indent)
        print(json.dumps(result, default=float))
        return result
