"""Shared fixture of the RAG tests: SmolLM2 loaded once per session (skipped when the GGUF is absent)."""

import pytest
import torch

from sparsekit.errors import NotFoundError


@pytest.fixture(scope="session")
def generator():
    from retrieval.rag.generator import Generator, locate_gguf

    try:
        locate_gguf()
    except NotFoundError as exc:
        pytest.skip(f"SmolLM2 GGUF unavailable ({exc})")
    return Generator.load(device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matmuls: one thread is fastest here and does not fight other processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHUNKS = [
    "Aspirin irreversibly inhibits cyclooxygenase enzymes, reducing prostaglandins and inflammation.",
    "Rayleigh scattering makes the sky blue because short wavelengths scatter more.",
    "Metformin lowers hepatic glucose production in type 2 diabetes.",
]
QUESTION = "How does aspirin reduce inflammation?"
