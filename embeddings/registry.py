"""The compression methods of the embedding benchmark (VLDB 2024, "Experimental Analysis of Large-scale
Learnable Vector Storage Compression") by name, importing their modules so their table kinds register.

A method's name is the table ``kind`` a user constructs (:func:`embeddings.table.table_class`);
serving-only kinds a method finalizes into (CSR rows, codebooks, quantized rows) register on import as
well, so a saved model rebuilds through :func:`embeddings.table.build_table`.
"""

from __future__ import annotations

import importlib

MODULES = ("full", "hashing", "qr", "tt_rec", "dhe", "robe", "dpq", "mgqe", "dedup", "mde", "autodim",
           "optembed", "deeplight", "pep", "autosrh", "quantization", "alpt", "adaptembed", "quantized_rows",
           "lsq")

# the benchmark's methods (the full table is the baseline, not a method)
METHODS = ("hashing", "qr", "tt_rec", "dhe", "robe", "dpq", "mgqe", "adaptembed", "mde", "autodim",
           "optembed", "deeplight", "pep", "autosrh", "int8", "int16", "alpt", "dedup", "lsq")

# published methods outside the VLDB 2024 benchmark's list, added after its methods missed a target; they
# compete as methods, and the benchmark also reports the choice without them
ADDED = ("lsq",)

# compositions of two published families (a shared-row table stored as low-bit codes); swept and reported
# beside the methods, never counted as one of them
COMPOSED = ("qr+int8", "qr+int4", "hashing+int8", "hashing+int4")


def import_all() -> None:
    """Import every method module (idempotent), registering all table kinds."""
    for name in MODULES:
        importlib.import_module(f"embeddings.{name}")
