"""What every benchmark result records about where it ran: the machine and the git commit
(:func:`sparsekit.provenance.commit`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from sparsekit.atomic import write_text_atomic
from sparsekit.provenance import commit

ROOT = Path(__file__).resolve().parents[1]


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


def report(name: str, start: float, metrics: dict[str, Any], acceptance: list[dict[str, Any]], out_dir: Path,
           indent: int = 1) -> dict[str, Any]:
    """The DESIGN.md §7 envelope of ``benchmarks/<name>.py`` (commit, machine, command, wall time since
    ``start``, metrics, acceptance), written to ``out_dir/<name>.json`` and printed as one JSON line."""
    import shlex
    import sys
    import time

    result = {"benchmark": name, "commit": commit(), "machine": machine(),
              "command": "python " + shlex.join([f"benchmarks/{name}.py", *sys.argv[1:]]),
              "wall_s": round(time.perf_counter() - start, 1), "metrics": metrics, "acceptance": acceptance}
    write_result(out_dir / f"{name}.json", result, indent=indent)
    print(json.dumps(result, default=float))
    return result
