"""AutoDim: field-aware embedding dimension search (Zhao et al., "AutoDim: Field-aware Embedding
Dimension Search in Recommender Systems", WWW 2021).

Search: every field ``f`` has one table per candidate width ``d_k`` (with a ``[d_k, dim]`` projection
when ``d_k < dim``) and architecture logits ``arch[f, k]``. A field's vector is the mixture
``sum_k w_fk * E_fk[x] P_fk`` with ``w_f = gumbel_softmax(arch_f, tau)`` during training (plain softmax
in evaluation). Then each field keeps one width and the table is trained on with that architecture
fixed; :meth:`AutoDimTable.finalize` returns the chosen candidates as a
:class:`~embeddings.mde.MixedDimTable` (per-field widths with projections), the serving table.

Design choices (and where they depart from the paper):

- One-level search: ``arch`` is trained jointly with the weights on the training loss by the trainer's
  optimizer (the paper's first-order DARTS update of ``arch`` on validation batches needs data the table
  never sees). ``tau`` anneals linearly from 1 to ``min_temperature`` over the search.
- Search and retraining share one run: after ``search_fraction`` of the trainer's total steps the
  architecture is fixed and training continues with only the chosen candidates (the paper retrains from
  scratch). A restored checkpoint from before that point is fixed in :meth:`finalize`.
- No batch norm after the projections (the paper's, to compare candidate magnitudes), so that a chosen
  candidate is exactly an MDE block; candidates share one init scale instead.
- Budget: candidates are the powers of two up to ``dim`` (``candidates`` to change), minus per field
  those that cannot fit next to the other fields' cheapest choice and those costlier than the full-width
  block. Fixing takes the argmax per field, then, while over budget, downgrades the field that loses the
  least logit per byte saved. :class:`BudgetError` when one dimension per field does not fit (on Frappe
  below about 6.5% of the full table). The search-phase table is larger than the budget; the serving
  table meets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.mde import MixedDimTable, block_bytes
from embeddings.table import BudgetError, EmbeddingTable
from sparsekit.errors import InputError


def default_candidates(dim: int) -> tuple[int, ...]:
    """Powers of two below ``dim``, and ``dim`` itself."""
    return (*(2**i for i in range(dim.bit_length()) if 2**i < dim), dim)


class AutoDimTable(EmbeddingTable):
    """Candidate-width tables per field mixed by learned weights; fixed to one width per field."""

    kind = "autodim"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        candidates: Sequence[int] | None = None,
        search_fraction: float = 0.1,
        min_temperature: float = 0.1,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        widths = sorted({int(c) for c in (candidates or default_candidates(dim))})
        if not widths or widths[0] < 1 or widths[-1] > dim:
            raise InputError("candidates", f"need widths in [1, {dim}], got {candidates}")
        if not 0.0 <= search_fraction <= 1.0:
            raise InputError("search_fraction", f"must be in [0, 1], got {search_fraction}")
        self.candidates = tuple(widths)
        self.search_fraction, self.min_temperature = float(search_fraction), float(min_temperature)
        self.init_std = float(init_std)
        self.sizes = self.field_dims or (num_features,)
        self.available = self.room_bytes()  # minus the field offsets
        self.allowed = self._allowed_candidates()
        self.starts = [0, *torch.tensor(self.sizes).cumsum(0).tolist()[:-1]]
        self.rows = nn.ParameterList()
        self.projections = nn.ParameterList()
        self._slots: list[list[tuple[int, int]]] = []  # per field, per allowed candidate: (row, proj) slots
        for n, allowed in zip(self.sizes, self.allowed, strict=True):
            slots = []
            for k in allowed:
                d = self.candidates[k]
                self.rows.append(nn.Parameter(torch.randn(n, d) * self.init_std))
                if d < dim:
                    self.projections.append(nn.Parameter(torch.randn(d, dim) / d**0.5))
                slots.append((len(self.rows) - 1, len(self.projections) - 1 if d < dim else -1))
            self._slots.append(slots)
        mask = torch.full((len(self.sizes), len(self.candidates)), float("-inf"))
        for f, allowed in enumerate(self.allowed):
            mask[f, list(allowed)] = 0.0
        self.register_buffer("arch_mask", mask, persistent=False)
        self.arch = nn.Parameter(torch.zeros(len(self.sizes), len(self.candidates)))
        self.register_buffer("choice", torch.full((len(self.sizes),), -1, dtype=torch.int64))
        self.temperature = 1.0

    def _cost(self, field: int, k: int) -> int:
        return block_bytes(self.sizes[field], self.candidates[k], self.dim)

    def _allowed_candidates(self) -> list[tuple[int, ...]]:
        """Per field, the candidates that can be part of a table within the budget."""
        full = len(self.candidates) - 1 if self.candidates[-1] == self.dim else None
        cheapest = [
            min(self._cost(f, k) for k in range(len(self.candidates))) for f in range(len(self.sizes))
        ]
        if sum(cheapest) > self.available:
            raise BudgetError(self.kind, f"{self.budget_bytes()} bytes cannot hold one dimension per field")
        allowed = []
        for f in range(len(self.sizes)):
            room = self.available - (sum(cheapest) - cheapest[f])
            ks = [
                k for k in range(len(self.candidates))
                if self._cost(f, k) <= room
                and (full is None or k == full or self._cost(f, k) < self._cost(f, full))
            ]
            allowed.append(tuple(ks))
        return allowed

    def options(self) -> dict[str, Any]:
        return {
            "candidates": list(self.candidates),
            "search_fraction": self.search_fraction,
            "min_temperature": self.min_temperature,
            "init_std": self.init_std,
        }

    @property
    def fixed(self) -> bool:
        return bool((self.choice >= 0).all())

    @property
    def settled(self) -> bool:
        return self.fixed

    def mixture_weights(self) -> torch.Tensor:
        """``[fields, candidates]`` weights: one-hot once fixed, else (Gumbel-)softmax of ``arch``."""
        if self.fixed:
            return F.one_hot(self.choice, len(self.candidates)).to(self.arch.dtype)
        logits = self.arch + self.arch_mask
        if self.training:
            return F.gumbel_softmax(logits, tau=self.temperature, dim=1)
        return torch.softmax(logits / self.temperature, dim=1)

    def _candidate(self, field: int, slot: int, local: torch.Tensor) -> torch.Tensor:
        row, proj = self._slots[field][slot]
        vectors = self.rows[row][local]
        return vectors if proj < 0 else vectors @ self.projections[proj]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        weights = self.mixture_weights()
        fields = self.field_of(flat)
        out = self.arch.new_zeros(flat.numel(), self.dim)
        for f, allowed in enumerate(self.allowed):
            hit = (fields == f).nonzero(as_tuple=True)[0]
            if hit.numel() == 0:
                continue
            local = flat[hit] - self.starts[f]
            ks = [int(self.choice[f])] if self.fixed else allowed
            mixed = sum(weights[f, k] * self._candidate(f, allowed.index(k), local) for k in ks)
            out = out.index_put((hit,), mixed)
        return out.reshape(*ids.shape, self.dim)

    def after_step(self, step: int, total_steps: int) -> None:
        if self.fixed:
            return
        self.resume_at(step, total_steps)
        if step >= self.search_fraction * total_steps:
            self.fix()

    def resume_at(self, step: int, total_steps: int) -> None:
        """The Gumbel temperature of step ``step`` (a plain attribute: not in the state dict)."""
        progress = min(1.0, step / max(self.search_fraction * total_steps, 1.0))
        self.temperature = 1.0 - (1.0 - self.min_temperature) * progress

    def fix(self) -> None:
        """Choose one candidate per field: the argmax, downgraded greedily until the budget holds."""
        logits = (self.arch + self.arch_mask).detach().cpu()
        choice = [int(logits[f].argmax()) for f in range(len(self.sizes))]
        while sum(self._cost(f, k) for f, k in enumerate(choice)) > self.available:
            best = None
            for f, k in enumerate(choice):
                smaller = [j for j in self.allowed[f] if self._cost(f, j) < self._cost(f, k)]
                if not smaller:
                    continue
                j = max(smaller, key=lambda j: float(logits[f, j]))
                loss = float(logits[f, k] - logits[f, j]) / (self._cost(f, k) - self._cost(f, j))
                if best is None or loss < best[0]:
                    best = (loss, f, j)
            _, f, j = best  # the all-cheapest choice fits (checked at construction): never None here
            choice[f] = j
        self.choice.copy_(torch.tensor(choice))

    def finalize(self) -> EmbeddingTable:
        if not self.fixed:
            self.fix()
        widths = [self.candidates[int(k)] for k in self.choice]
        table = MixedDimTable(
            self.num_features, self.dim, self.budget, field_dims=self.field_dims,
            blocks=self.sizes, dims=widths, init_std=self.init_std,
        ).to(self.arch.device)
        with torch.no_grad():
            for f, k in enumerate(self.choice.tolist()):
                row, proj = self._slots[f][self.allowed[f].index(k)]
                table.rows[f].copy_(self.rows[row])
                if proj >= 0:
                    table.projections[table._projection_of[f]].copy_(self.projections[proj])
        return table

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, candidates={list(self.candidates)}, choice={self.choice.tolist()}"
