"""Planetoid citation graphs (Cora, CiteSeer, PubMed; Yang, Cohen & Salakhutdinov, ICML 2016) via PyG.

Loads a graph with ``torch_geometric.datasets.Planetoid`` from local raw files laid out as PyG expects
(``<root>/<Name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``), never downloading. PyG writes
``processed/`` next to ``raw/``, and the shared data folder is read-only, so the raw files are first
copied into a writable cache directory. The returned ``Data`` carries the public train/val/test masks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sparsekit.atomic import atomic_path
from sparsekit.errors import InputError

if TYPE_CHECKING:
    from torch_geometric.data import Data

RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def raw_file_names(name: str) -> list[str]:
    """The eight raw files PyG's Planetoid reads for dataset ``name``."""
    return [f"ind.{name.lower()}.{part}" for part in RAW_PARTS]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sparsekit/planetoid`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparsekit" / "planetoid"


def _check_raw(raw_dir: Path, files: list[str]) -> None:
    expected = ", ".join(files)
    if not raw_dir.is_dir():
        raise InputError(raw_dir, f"Planetoid raw folder not found; expected it to hold {expected}")
    missing = [f for f in files if not (raw_dir / f).is_file()]
    if missing:
        raise InputError(raw_dir, f"missing raw files {', '.join(missing)}; expected {expected}")


def _same_file(src: Path, dst: Path) -> bool:
    if not dst.is_file():
        return False
    a, b = src.stat(), dst.stat()
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def _copy_raw(src_dir: Path, dst_dir: Path, files: list[str]) -> bool:
    """Copy raw files that are absent or differ (size, mtime), each atomically; True if any was copied."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    copied = False
    for name in files:
        src, dst = src_dir / name, dst_dir / name
        if _same_file(src, dst):
            continue
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)  # keeps mtime, which _same_file compares
        copied = True
    return copied


def load_planetoid(root: str | Path, name: str = "Cora", cache_dir: str | Path | None = None) -> Data:
    """The ``name`` graph from ``<root>/<name>/raw/`` as a PyG ``Data`` with train/val/test masks.

    Raw files are copied to ``<cache_dir>/<name>/raw/`` (default :func:`default_cache_dir`), where PyG
    processes them once and caches ``processed/``; a changed raw file is copied again and reprocessed.
    """
    files = raw_file_names(name)
    raw_dir = Path(root) / name / "raw"
    _check_raw(raw_dir, files)
    from torch_geometric.datasets import Planetoid  # heavy import, only once the input is known good

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _copy_raw(raw_dir, cache / name / "raw", files):
        shutil.rmtree(cache / name / "processed", ignore_errors=True)  # stale once raw files change
    return Planetoid(root=str(cache), name=name)[0]
