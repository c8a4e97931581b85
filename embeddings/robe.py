"""ROBE: Random Offset Block Embedding (Desai, Chou & Shrivastava, "Random Offset Block Embedding (ROBE)
for compressed embedding tables in deep learning recommendation systems", MLSys 2022).

All features share ONE learned circular array ``M`` of ``size`` floats. The ``dim`` coordinates of a
feature's vector are cut into chunks of ``chunk`` consecutive coordinates (ROBE-Z, ``Z = chunk``); chunk
``c`` of feature ``x`` is read from ``chunk`` consecutive slots of ``M`` starting at the hashed offset
``h(x, c) mod size``, wrapping around the end (the array is circular), and multiplied by a sign hash
``g(x, c) = +-1``. Any budget down to one chunk of floats is reachable; the array is the whole storage.

Design choices:

- ``size`` = every float the budget holds (after the base class's field offsets, when given).
  :class:`~embeddings.table.BudgetError` only when not even ``chunk`` floats fit.
- ``chunk`` defaults to ``dim`` (one block per vector: one contiguous read, the paper's fastest
  configuration); smaller chunks spread a vector over more of the array. It need not divide ``dim``
  (the last chunk is shorter).
- ``h`` and ``g`` are seeded universal hashes of the key ``x * num_chunks + c``
  (:func:`kernels.embedding_bag_reference.universal_hash`); their coefficients are a function of
  ``seed`` and are recomputed, not stored. ``signed=False`` drops the sign hash.
- The array starts at N(0, ``init_std``) like the full table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.hashing import hash_coefficients
from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from kernels.embedding_bag_reference import universal_hash
from sparsekit.errors import InputError


class ROBETable(EmbeddingTable):
    """One circular array ``memory[size]``; chunk ``c`` of feature ``x`` starts at ``h(x, c) mod size``."""

    kind = "robe"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        chunk: int | None = None,
        signed: bool = True,
        seed: int = 0,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        self.chunk = dim if chunk is None else int(chunk)
        if not 1 <= self.chunk <= dim:
            raise InputError("chunk", f"must be in [1, dim={dim}], got {chunk}")
        self.signed, self.seed, self.init_std = bool(signed), int(seed), float(init_std)
        self.size = self.room_bytes() // FLOAT_BYTES
        if self.size < self.chunk:
            raise BudgetError(self.kind, f"{self.budget_bytes()} bytes hold no {self.chunk}-float chunk")
        self.num_chunks = math.ceil(dim / self.chunk)
        self.offset_hash, self.sign_hash = hash_coefficients(self.seed, 2)
        self.memory = nn.Parameter(torch.empty(self.size))
        nn.init.normal_(self.memory, std=self.init_std)
        coords = torch.arange(dim)
        self._chunk_of, self._within = coords // self.chunk, coords % self.chunk  # derived, not stored

    def options(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "signed": self.signed, "seed": self.seed, "init_std": self.init_std}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self._chunk_of.device != ids.device:
            self._chunk_of, self._within = self._chunk_of.to(ids.device), self._within.to(ids.device)
        keys = ids.long().unsqueeze(-1) * self.num_chunks + self._chunk_of  # [*, dim]
        start = universal_hash(keys, *self.offset_hash, self.size)
        out = self.memory[(start + self._within) % self.size]
        if self.signed:
            sign = universal_hash(keys, *self.sign_hash, 2)
            out = out * (1 - 2 * sign).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, size={self.size}, chunk={self.chunk}, signed={self.signed}"
