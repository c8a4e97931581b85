"""Retrieval-augmented generation with a reusable chunk KV cache (Cache-Craft, SIGMOD 2025).

:class:`~retrieval.rag.engine.RagEngine` is the entry point: SmolLM2 (:mod:`.generator`) answers a
question from retrieved chunks, reusing cached chunk KV (:mod:`.chunk_cache`) under one of the
policies of :mod:`.policies` (full recompute, vLLM prefix caching, naive reuse, CacheBlend,
Cache-Craft). Imports are lazy so ``import retrieval.rag`` stays cheap.
"""

from typing import Any

__all__ = ["POLICIES", "CacheConfig", "ChunkCache", "GenerationResult", "GenerationStats", "Generator",
           "RagEngine"]
_WHERE = {"POLICIES": "policies", "CacheConfig": "chunk_cache", "ChunkCache": "chunk_cache",
          "GenerationResult": "engine", "GenerationStats": "engine", "Generator": "generator",
          "RagEngine": "engine"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'retrieval.rag' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"retrieval.rag.{_WHERE[name]}"), name)
