"""Device names are checked up front (:func:`sparsekit.device.resolve_device`)."""

from __future__ import annotations

import pytest

from sparsekit.device import cuda_available, default_device, resolve_device
from sparsekit.errors import InputError


def test_none_means_the_default_and_cpu_is_always_accepted() -> None:
    assert resolve_device(None) == default_device()
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["tpu", "cpu:0", "cpu:", "cuda:", "cuda:x", "cuda:\u0663", "", "CUDA"])
def test_unknown_names_are_refused_naming_the_option(name: str) -> None:
    with pytest.raises(InputError, match=r"^--device: unknown device"):
        resolve_device(name, "--device")


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("forced, message", [("gpu", "unknown device 'gpu'"),
                                              ("cuda", "no CUDA device")])
def test_a_bad_sparsekit_device_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, forced: str,
                                                               message: str) -> None:
    if forced == "cuda" and cuda_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    monkeypatch.setenv("SPARSEKIT_DEVICE", forced)
    for pick in (default_device, lambda: resolve_device(None)):
        with pytest.raises(InputError, match=rf"^SPARSEKIT_DEVICE: .*{message}"):
            pick()
    monkeypatch.setenv("SPARSEKIT_DEVICE", " CPU ")
    assert default_device() == resolve_device(None) == "cpu"


def test_a_torch_device_is_accepted_and_a_missing_gpu_index_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert resolve_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one GPU, as torch would report it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(InputError, match=r"'cuda:7' requested, but torch sees 1 CUDA device"):
        resolve_device("cuda:7")
    monkeypatch.setenv("SPARSEKIT_DEVICE", "cpu")  # it is the variable that forces the CPU, not the machine
    with pytest.raises(InputError, match="SPARSEKIT_DEVICE=cpu forces the CPU"):
        resolve_device("cuda")
