"""The KV of one prompt, all layers stacked: what the chunk cache assembles and selective prefill fills.

Keys and values are ``[layers, kv_heads, tokens, head_dim]`` tensors; keys are post-RoPE, as the HF
Llama cache holds them (see :mod:`retrieval.rag.rope`). Slices of a segment are what
:mod:`retrieval.rag.chunk_cache` stores; :meth:`PromptKV.to_dynamic_cache` hands the whole prompt to
the HF model for decoding (Cache-Craft, SIGMOD 2025; CacheBlend, EuroSys 2025 assemble the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache


@dataclass
class PromptKV:
    """Per-layer keys and values of a prompt: ``[layers, kv_heads, tokens, head_dim]`` each."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def empty(cls, layers: int, kv_heads: int, tokens: int, head_dim: int, dtype: torch.dtype,
              device: str | torch.device) -> PromptKV:
        shape = (layers, kv_heads, tokens, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device))

    @property
    def tokens(self) -> int:
        return self.keys.shape[2]

    def span(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the keys and values of tokens ``start..end-1``."""
        return self.keys[:, :, start:end].clone(), self.values[:, :, start:end].clone()

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Place a segment's keys and values at ``start``."""
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys.to(self.keys.device, self.keys.dtype)
        self.values[:, :, start:end] = values.to(self.values.device, self.values.dtype)

    def to_dynamic_cache(self) -> DynamicCache:
        """A fresh HF ``DynamicCache`` holding this KV (decoding appends to it, not to this object)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(self.keys[layer][None], self.values[layer][None])
                                            for layer in range(self.keys.shape[0])])
