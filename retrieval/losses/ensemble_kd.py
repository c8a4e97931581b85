"""Heterogeneous ensemble knowledge distillation: normalised teacher scores, KL to the student.

Geng et al., "Towards Competitive Search Relevance For Inference-Free Learned Sparse Retrievers"
(2024). Several teachers of different kinds (here a dense bi-encoder, all-MiniLM-L6-v2, and a sparse
one, BM25) score each query's candidates. Their scales are incomparable, so each teacher's scores
are min-max normalised *per query* to [0, 1], the teachers are averaged, and the result is scaled
(by 30 in the paper) into a sharp target distribution. The student is trained with

    L = KL( softmax(teacher) || softmax(student) ),   averaged over queries ("batchmean").

A query whose candidates a teacher scores all alike (max == min) carries no ranking signal from
that teacher: its normalised row is all zeros (softmax-neutral), never NaN. Rows padded to a common
width pass ``valid``: the padding takes no part in a row's min and max (it is not a candidate) and
comes out 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SCALE = 30.0


def minmax_normalize(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row min-max normalisation of [B, C] scores to [0, 1]; constant rows become 0.

    ``valid`` (bool [B, C]): only these entries set a row's min and max; the others come out 0.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, C], got shape {tuple(scores.shape)}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    elif valid.shape != scores.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)}, scores {tuple(scores.shape)}")
    low = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True).values
    high = scores.masked_fill(~valid, float("-inf")).max(dim=1, keepdim=True).values
    span = high - low
    out = (scores - low) / torch.where(span > 0, span, torch.ones_like(span))
    return out.masked_fill(~valid, 0.0)


def ensemble_teacher_scores(teachers: Sequence[torch.Tensor], scale: float = DEFAULT_SCALE,
                            valid: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * mean_k minmax(teacher_k)``: the ensemble target logits [B, C] (no gradient); ``valid``
    marks the real candidates of padded rows (see :func:`minmax_normalize`)."""
    if not teachers:
        raise ValueError("need at least one teacher score tensor")
    shapes = {tuple(t.shape) for t in teachers}
    if len(shapes) != 1:
        raise ValueError(f"teacher score tensors differ in shape: {sorted(shapes)}")
    normalised = torch.stack([minmax_normalize(t.detach().float(), valid) for t in teachers])
    return scale * normalised.mean(dim=0)


def ensemble_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per query, averaged over the batch."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"need equal [B, C] shapes, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher.detach(), dim=1),
                    reduction="batchmean", log_target=True)
