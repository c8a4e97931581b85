"""Compute-device selection: CUDA when present, CPU otherwise (every path runs on CPU)."""

from __future__ import annotations

import os
from typing import Any


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
    """``"cuda"`` when available, else ``"cpu"``; ``SPARSEKIT_DEVICE`` forces one, checked as
    :func:`resolve_device` checks a device (an unknown name, or cuda without CUDA, raises naming it)."""
    forced = os.environ.get("SPARSEKIT_DEVICE", "").strip().lower()
    if forced:
        return resolve_device(forced, "SPARSEKIT_DEVICE")
    return "cuda" if cuda_available() else "cpu"


def resolve_device(device: Any, source: str = "device") -> str:
    """A checked device name: ``None`` means :func:`default_device`; ``cpu``, ``cuda`` or ``cuda:N`` (or
    a ``torch.device``) otherwise. Raises :class:`~sparsekit.errors.InputError` naming ``source`` for an
    unknown name, for CUDA on a machine without it or a GPU index it does not have, instead of torch's
    error deep inside the first transfer."""
    from sparsekit.errors import InputError

    if device is None:
        return default_device()
    device = str(device)  # a torch.device too
    kind, colon, index = device.partition(":")
    numbered = index.isascii() and index.isdigit()  # str.isdigit alone takes other scripts' digits
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not numbered)):
        raise InputError(source, f"unknown device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and os.environ.get("SPARSEKIT_DEVICE", "").strip().lower() == "cpu":
        raise InputError(source, f"{device!r} requested, but SPARSEKIT_DEVICE=cpu forces the CPU")
    if kind == "cuda" and not cuda_available():
        raise InputError(source, f"{device!r} requested, but torch sees no CUDA device here (use cpu)")
    if index:
        import torch

        if int(index) >= torch.cuda.device_count():
            raise InputError(source, f"{device!r} requested, but torch sees {torch.cuda.device_count()} "
                                     "CUDA device(s)")
    return device
