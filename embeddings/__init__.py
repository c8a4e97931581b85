"""Embedding tables behind one interface: the full table and compressed drop-in replacements.

The methods of the VLDB 2024 benchmark ("Experimental Analysis of Large-scale Learnable Vector Storage
Compression"), one module each, all :class:`~embeddings.table.EmbeddingTable` built from
``(num_features, dim, budget)`` (:mod:`.table`); :mod:`.registry` names them, and :mod:`.sweep` trains
every method x budget x seed with a CTR model and recommends a method per budget. One published method
outside that benchmark, LSQ (learned step size quantization, :mod:`.lsq`), was added later
(:data:`.registry.ADDED`).
"""
