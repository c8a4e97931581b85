"""MarginMSE distillation loss.

Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
Distillation" (arXiv 2010.02666, 2020). The student learns the teacher's score *margin* between a
positive and a negative document rather than the raw scores, so teachers and students on different
scales can be mixed:

    L = mean( ((s_pos - s_neg) - (t_pos - t_neg))^2 )

The alternative to ensemble KL distillation (:mod:`.ensemble_kd`) in Geng et al. 2024. Inputs are
[B] (one negative per query) or [B, K] with positives as [B, 1] (broadcast over K negatives).
"""

from __future__ import annotations

import torch


def margin_mse_loss(student_pos: torch.Tensor, student_neg: torch.Tensor, teacher_pos: torch.Tensor,
                    teacher_neg: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between student and teacher margins (teacher detached)."""
    student_margin = student_pos - student_neg
    teacher_margin = (teacher_pos - teacher_neg).detach()
    if student_margin.shape != teacher_margin.shape:
        raise ValueError(f"student margins {tuple(student_margin.shape)} != teacher margins "
                         f"{tuple(teacher_margin.shape)}")
    return (student_margin - teacher_margin).pow(2).mean()
