"""Training losses for inference-free learned sparse retrieval (one loss per module).

* :mod:`~retrieval.losses.flops`: FLOPS regularizer + quadratic warm-up (Paria et al., ICLR 2020).
* :mod:`~retrieval.losses.idf_matching`: IDF-aware matching scores (Geng et al. 2024).
* :mod:`~retrieval.losses.ensemble_kd`: heterogeneous ensemble distillation (Geng et al. 2024).
* :mod:`~retrieval.losses.margin_mse`: MarginMSE (Hofstätter et al. 2020).
"""

from retrieval.losses.ensemble_kd import ensemble_kd_loss, ensemble_teacher_scores, minmax_normalize
from retrieval.losses.flops import FlopsWarmup, flops_loss
from retrieval.losses.idf_matching import (
    idf_aware_candidate_scores,
    idf_aware_scores,
    plain_candidate_scores,
    plain_scores,
)
from retrieval.losses.margin_mse import margin_mse_loss

__all__ = [
    "FlopsWarmup",
    "ensemble_kd_loss",
    "ensemble_teacher_scores",
    "flops_loss",
    "idf_aware_candidate_scores",
    "idf_aware_scores",
    "margin_mse_loss",
    "minmax_normalize",
    "plain_candidate_scores",
    "plain_scores",
]
