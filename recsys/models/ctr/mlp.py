"""The deep tower shared by the CTR models (DLRM top MLP, Wide&Deep, DeepFM, DCNv2) and its input.

:class:`MLP` is a plain ``nn.Sequential`` of ``Linear -> ReLU [-> Dropout]`` blocks, optionally
ending in an output ``Linear`` (no batch norm), so that post-training compression
(:mod:`recsys.lowrank`) can find each ``Linear`` and the module that follows it.
:class:`DeepInput` is how a model hands its embeddings to the deep tower: the flattened
``[B, F * dim]`` vectors. Low-rank compression swaps it for a module that feeds the tower the
compressed codes instead (the embedding's up-projection folded into the first FC layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embeddings.table import EmbeddingTable
from sparsekit.errors import InputError


class MLP(nn.Sequential):
    """``Linear -> ReLU [-> Dropout]`` per hidden width, then ``Linear(out_dim)`` when ``out_dim``."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0, out_dim: int | None = 1
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise InputError("dropout", f"must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)
        self.out_features = out_dim if out_dim is not None else width


class DeepInput(nn.Module):
    """The deep tower's input: the looked-up embeddings ``[B, F, dim]`` flattened to ``[B, F * dim]``."""

    def forward(self, table: EmbeddingTable, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return emb.flatten(1)
