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
    """``"cuda"`` when available, else ``"cpu"``; ``SPARSEKIT_DEVICE`` forces one, checked as
    :func:`resolve_device` checks a device (an unknown name, or cuda without CUDA, raises naming it)."""
    forced = os.environ.get("SPARSEKIT_DEVICE", "").strip().lower()
    if forced:
        return resolve_device(forced, "SPARSEKIT_DEVICE")
    return "cuda" if cuda_available() else "cpu"


def resolve_device(device: str | None, source: str = "device") -> str:
    """A checked device name: ``None`` means :func:`default_device`; ``cpu``, ``cuda`` or ``cuda:N``
    otherwise. Raises :class:`~sparsekit.errors.InputError` naming ``source`` for an unknown name, or for
    CUDA on a machine without it (instead of torch's assertion deep inside the first transfer)."""
    from sparsekit.errors import InputError

    if device is None:
        return default_device()
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise InputError(source, f"unknown device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not cuda_available():
        raise InputError(source, f"{device!r} requested, but torch sees no CUDA device here (use cpu)")
    return device
