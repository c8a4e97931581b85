"""Shared fixtures of the RAG tests: SmolLM2 loaded once per session (skipped when the GGUF is absent)
and a whitespace tokenizer for the chunking and corpus tests."""

import re

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


class WordTokenizer:
    """One token per whitespace-separated word, with character offsets (the HF calls the RAG code makes)."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        out = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def __len__(self) -> int:
        return 0


@pytest.fixture(scope="session")
def word_tokenizer() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matmuls: one thread is fastest here. Module scope, so the module-scoped generation fixtures
    (``reference``, ``prompt``) run on one thread too, as the tests that compare against them do."""
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
