"""Deep Hash Embedding (Kang et al., "Learning to Embed Categorical Features without Embedding Tables for
Recommendation", KDD 2021).

DHE stores no table: feature ``x`` is encoded by ``k`` universal hashes into a dense, fixed vector
``enc(x)`` (each hash scaled to ``[-1, 1]``) and a feed-forward network (the "decoder") turns that
encoding into the embedding. Only the MLP's weights are stored and trained.

Design choices:

- Encoding: ``k`` hashes ``h_i(x) mod 10^6`` mapped uniformly onto ``[-1, 1]`` (the paper's
  "uniform" encoding; its Gaussian variant performed the same). The ``k`` hash coefficient pairs are a
  function of ``seed`` and are recomputed, not stored, like every hashing method here.
- Decoder: ``hidden_layers`` (default 2) Linear + Mish layers of width ``hidden``, then a linear
  output layer to ``dim``. No batch norm (its running statistics would be stored state; the paper
  reports it helps at large widths).
- Sizing: the paper uses ``k = 1024`` and 1800-wide layers, far over these budgets. By default
  ``num_hashes = hidden = w`` with ``w`` the widest network that fits the budget (at least
  ``MIN_WIDTH``). Giving ``num_hashes`` and ``hidden`` fixes the network, and
  :class:`~embeddings.table.BudgetError` is raised when that MLP alone exceeds the budget (also when
  the narrowest default network does).
- Hashing is fine with out-of-range ids in principle, but the base class still rejects them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from embeddings.hashing import hash_coefficients
from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from kernels.embedding_bag_reference import universal_hash
from sparsekit.errors import InputError

BUCKETS = 1_000_000  # the paper's hash range m
MIN_WIDTH = 16  # the narrowest default network (hashes and hidden units) DHE is built with


def mlp_floats(num_hashes: int, hidden: int, hidden_layers: int, dim: int) -> int:
    """Weights + biases of ``num_hashes -> hidden (x hidden_layers) -> dim``."""
    widths = [num_hashes, *([hidden] * hidden_layers), dim]
    return sum(a * b + b for a, b in pairwise(widths))


class DHETable(EmbeddingTable):
    """Hash encoding ``[*, k]`` -> MLP -> ``[*, dim]``; no per-feature storage."""

    kind = "dhe"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        num_hashes: int | None = None,
        hidden: int | None = None,
        hidden_layers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if hidden_layers < 1:
            raise InputError("hidden_layers", f"needs at least one hidden layer, got {hidden_layers}")
        self.hidden_layers, self.seed = int(hidden_layers), int(seed)
        floats = self.room_bytes() // FLOAT_BYTES
        self.num_hashes, self.hidden = self._size(floats, num_hashes, hidden)
        used = mlp_floats(self.num_hashes, self.hidden, self.hidden_layers, dim)
        if used > floats:
            raise BudgetError(self.kind, f"the {self.num_hashes}-{self.hidden}x{self.hidden_layers}-{dim} "
                                         f"MLP alone needs {used * FLOAT_BYTES} bytes, over the budget of "
                                         f"{floats * FLOAT_BYTES}")
        pairs = hash_coefficients(self.seed, self.num_hashes)
        self._coefficients = torch.tensor(pairs, dtype=torch.int64).T  # [2, k]; derived, not stored
        widths = [self.num_hashes, *([self.hidden] * self.hidden_layers)]
        layers: list[nn.Module] = []
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.Mish()]
        self.decoder = nn.Sequential(*layers, nn.Linear(widths[-1], dim))

    def _size(self, floats: int, num_hashes: int | None, hidden: int | None) -> tuple[int, int]:
        if num_hashes is not None and hidden is not None:
            if min(num_hashes, hidden) < 1:
                raise InputError("num_hashes", f"needs positive sizes, got {num_hashes} and {hidden}")
            return int(num_hashes), int(hidden)

        def size(w: int) -> tuple[int, int]:
            return int(num_hashes or w), int(hidden or w)

        width = MIN_WIDTH
        while mlp_floats(*size(width + 1), self.hidden_layers, self.dim) <= floats:
            width += 1
        return size(width)

    def options(self) -> dict[str, Any]:
        return {"num_hashes": self.num_hashes, "hidden": self.hidden, "hidden_layers": self.hidden_layers,
                "seed": self.seed}

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The dense hash encoding ``[*ids.shape, num_hashes]`` in ``[-1, 1]``."""
        if self._coefficients.device != ids.device:
            self._coefficients = self._coefficients.to(ids.device)
        a, b = self._coefficients
        codes = universal_hash(ids.long().unsqueeze(-1), a, b, BUCKETS)
        return codes.float() * (2.0 / (BUCKETS - 1)) - 1.0

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)  # a batch repeats most features
        return self.decoder(self.encode(unique))[inverse]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hashes={self.num_hashes}, hidden={self.hidden}x{self.hidden_layers}"
