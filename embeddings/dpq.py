"""Differentiable product quantization (Chen, Li & Sun, "Differentiable Product Quantization for End-to-End
Embedding Compression", ICML 2020) and the codes + codebook table it serves from.

Training (:class:`DPQTable`): every feature has a query vector ``q_x`` (a full ``[N, dim]`` table, as in
the paper: training memory is not compressed). ``q_x`` is cut into ``groups`` sub-vectors; sub-vector
``g`` picks one of ``codewords`` key centroids ``K_g`` and outputs the matching *value* centroid
``V_g[code]``. The pick is made differentiable with the paper's softmax relaxation (DPQ-SX): the forward
pass uses the hard one-hot of ``argmax`` and the backward pass the gradient of
``softmax(-||q - K_g||^2 / temperature)`` (straight-through), so queries, keys and values train by
backprop.

Serving (:class:`CodebookTable`, returned by :meth:`DPQTable.finalize`): only the ``N x groups`` codes
and the value codebook ``[groups, codewords, dim / groups]`` are kept. Its outputs equal the training
table's outputs in eval mode.

Design choices:

- Distances rather than the paper's dot products in the softmax (the DPQ-VQ assignment with the SX
  gradient): tiny initial vectors give near-uniform, non-degenerate assignments.
- Codes are bit-packed: ``codewords`` is rounded up to ``2^b`` with ``b`` in ``CODE_BITS`` = 1, 2, 4, 8
  (``8 // b`` codes per uint8) or 16 (int16), so no code straddles a byte. This is what lets PQ reach
  budgets below one byte per feature.
- Sizing: the budget is met by the *serving* table (codes + value codebook + the base class's field
  offsets). Unless ``groups`` / ``codewords`` are given, we take the layout with the most code bits per
  feature (``groups * b``; ties: more codewords); ``groups`` divides ``dim``.
  :class:`~embeddings.table.BudgetError` when even 1 group of 1-bit codes (N / 8 bytes) does not fit.
- ``temperature`` 0.3 was chosen on the Frappe validation split under the embedding benchmark's
  protocol (DCNv2 at budgets 0.01 and 0.1, seeds 0-2, early stopping from epoch 10). Mean validation
  AUC at 0.01 / 0.1: 0.1 gave 0.9341 / 0.9425, 0.3 0.9384 / 0.9466, 1.0 0.9359 / 0.9443, 3.0 0.9234 /
  0.9397. :class:`~embeddings.mgqe.MGQETable` has its own default, chosen the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from sparsekit.errors import InputError

CODE_BITS = (1, 2, 4, 8, 16)
SEARCH_BITS = (1, 2, 4, 8)  # the automatic layout search stays at <= 256 codewords (the paper's range)
ASSIGN_CHUNK = 65536  # features assigned per step when finalizing


def code_bits(codewords: int) -> int:
    """Bits per stored code for ``codewords`` centroids: the smallest of ``CODE_BITS`` that fits."""
    for bits in CODE_BITS:
        if codewords <= 1 << bits:
            return bits
    raise InputError("codewords", f"at most {1 << CODE_BITS[-1]} codewords, got {codewords}")


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits as stored by :func:`pack_codes`."""
    return 2 * count if bits == 16 else math.ceil(count * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat integer codes -> uint8 with ``8 // bits`` codes per byte (low bits first), or int16 for 16."""
    codes = codes.reshape(-1).long()
    if bits == 16:
        return codes.to(torch.int16)  # two's complement: unpack masks back to 0..65535
    per = 8 // bits
    padded = F.pad(codes, (0, -codes.numel() % per)).reshape(-1, per)
    shifts = torch.arange(per, device=codes.device) * bits
    return (padded << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, index: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes at positions ``index`` (any shape) of a :func:`pack_codes` array, as int64."""
    if bits == 16:
        return packed[index].long() & 0xFFFF
    per = 8 // bits
    return (packed[index // per].long() >> ((index % per) * bits)) & ((1 << bits) - 1)


def plan_codes(
    num_features: int, dim: int, available: int, groups: int | None = None, codewords: int | None = None,
    source: str = "dpq",
) -> tuple[int, int]:
    """``(groups, codewords)`` of the serving table within ``available`` bytes (see module doc); the
    :class:`~embeddings.table.BudgetError` names ``source``."""
    def size(g: int, k: int) -> int:
        return packed_bytes(num_features * g, code_bits(k)) + k * dim * FLOAT_BYTES

    group_options = [groups] if groups else [g for g in range(1, dim + 1) if dim % g == 0]
    word_options = [codewords] if codewords else [1 << b for b in SEARCH_BITS]
    fits = [(g * code_bits(k), k, g) for g in group_options for k in word_options if size(g, k) <= available]
    if not fits:
        g, k = group_options[0], word_options[0]
        raise BudgetError(source, f"{num_features} features x {g} group(s) of {k}-codeword codes need "
                                   f"{size(g, k)} bytes, the budget holds {available}")
    _, k, g = max(fits)
    return g, k


def check_layout(dim: int, groups: int, codewords: int) -> None:
    if groups < 1 or dim % groups:
        raise InputError("groups", f"must divide dim={dim}, got {groups}")
    if codewords < 1:
        raise InputError("codewords", f"must be >= 1, got {codewords}")
    code_bits(codewords)


class CodebookTable(EmbeddingTable):
    """Serving product quantization: packed codes ``[N * groups]`` + ``codebook[groups, K, dim / groups]``.

    Feature ``x``'s sub-vector ``g`` is ``codebook[g, code[x * groups + g]]``. Also the storage of
    :class:`embeddings.dedup.DedupTable` (one group: codes are an index map into unique rows).
    """

    kind = "codebook"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        groups: int = 1,
        codewords: int = 256,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        check_layout(dim, groups, codewords)
        self.groups, self.codewords, self.bits = int(groups), int(codewords), code_bits(codewords)
        self.codebook = nn.Parameter(torch.zeros(groups, codewords, dim // groups))
        self.register_buffer("codes", pack_codes(torch.zeros(num_features * groups), self.bits))

    @classmethod
    def from_codes(cls, source: EmbeddingTable, codes: torch.Tensor, codebook: torch.Tensor) -> CodebookTable:
        """A table like ``source`` (size, budget, fields) storing ``codes [N, groups]`` and ``codebook``."""
        groups, codewords, _ = codebook.shape
        table = cls(source.num_features, source.dim, source.budget, field_dims=source.field_dims,
                    groups=groups, codewords=codewords).to(codebook.device)
        with torch.no_grad():
            table.codebook.copy_(codebook)
            table.codes = pack_codes(codes, table.bits)
        table.check_budget()
        return table

    def options(self) -> dict[str, Any]:
        return {"groups": self.groups, "codewords": self.codewords}

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        group = torch.arange(self.groups, device=ids.device)
        codes = unpack_codes(self.codes, ids.long().unsqueeze(-1) * self.groups + group, self.bits)
        return self.codebook[group, codes].flatten(-2)  # [*, groups, sub] -> [*, dim]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}, codewords={self.codewords}, bits={self.bits}"


class DPQTable(EmbeddingTable):
    """Query table + key/value codebooks trained end to end; :meth:`finalize` keeps codes + values."""

    kind = "dpq"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        groups: int | None = None,
        codewords: int | None = None,
        temperature: float = 0.3,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if temperature <= 0:
            raise InputError("temperature", f"must be positive, got {temperature}")
        if groups is not None or codewords is not None:
            check_layout(dim, groups or 1, codewords or 2)
        self.groups, self.codewords = self.plan(groups, codewords)
        self.temperature, self.init_std = float(temperature), float(init_std)
        sub = dim // self.groups
        self.query = nn.Parameter(torch.randn(num_features, dim) * self.init_std)
        self.keys = nn.Parameter(torch.randn(self.groups, self.codewords, sub) * self.init_std)
        self.values = nn.Parameter(torch.randn(self.groups, self.codewords, sub) * self.init_std)

    def plan(self, groups: int | None, codewords: int | None) -> tuple[int, int]:
        """The serving layout within the budget (subclasses with other storage override it)."""
        available = self.room_bytes()
        return plan_codes(self.num_features, self.dim, available, groups, codewords, self.kind)

    def options(self) -> dict[str, Any]:
        return {"groups": self.groups, "codewords": self.codewords, "temperature": self.temperature,
                "init_std": self.init_std}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """``-||q_g - K_g||^2 / temperature``: ``[*ids.shape, groups, codewords]``."""
        q = self.query[ids].unflatten(-1, (self.groups, -1))  # [*, G, sub]
        dist = (q.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("...gs,gks->...gk", q, self.keys)
                + self.keys.pow(2).sum(-1))
        return -dist / self.temperature

    def allowed(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Mask ``[*ids.shape, 1 or groups, codewords]`` of the codewords each feature may use (None: all)."""
        return None

    def _masked_logits(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.logits(ids)
        mask = self.allowed(ids)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Hard codes ``[*ids.shape, groups]`` (what the serving table stores)."""
        return self._masked_logits(ids).argmax(dim=-1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)  # a batch repeats most features
        return self._vectors(unique)[inverse]

    def _vectors(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self._masked_logits(ids)
        group = torch.arange(self.groups, device=ids.device)
        out = self.values[group, logits.argmax(dim=-1)]  # hard forward: [n, groups, sub]
        if self.training:  # straight-through: + (soft - soft) = 0 carries the softmax gradient
            soft = logits.softmax(dim=-1)
            out = out + torch.einsum("ngk,gks->ngs", soft - soft.detach(), self.values)
        return out.flatten(-2)

    @torch.no_grad()
    def all_codes(self) -> torch.Tensor:
        """Codes ``[num_features, groups]`` of every feature, in chunks."""
        ids = torch.arange(self.num_features, device=self.query.device)
        return torch.cat([self.codes(chunk) for chunk in ids.split(ASSIGN_CHUNK)])

    def finalize(self) -> EmbeddingTable:
        return CodebookTable.from_codes(self, self.all_codes(), self.values.detach())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}, codewords={self.codewords}"
