"""Retrieval-augmented generation with a reusable chunk KV cache (Cache-Craft, SIGMOD 2025).

:class:`~retrieval.rag.engine.RagEngine` is the entry point: SmolLM2 (:mod:`.generator`) answers a
question from retrieved chunks, reusing cached chunk KV (:mod:`.chunk_cache`) under one of the
policies of :mod:`.policies` (full recompute, vLLM prefix caching, naive reuse, CacheBlend,
Cache-Craft).
"""
