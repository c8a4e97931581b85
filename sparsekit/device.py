"""Compute-device selection: CUDA when present, CPU otherwise (every path runs on CPU)."""

from __future__ import annotations

import os


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (and SPARSEKIT_DEVICE isn't 'cpu')."""
    if os.environ.get("SPARSEKIT_DEVICE", "").lower() == "cpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``; ``SPARSEKIT_DEVICE`` forces one."""
    forced = os.environ.get("SPARSEKIT_DEVICE")
    if forced:
        return forced
    return "cuda" if cuda_available() else "cpu"
