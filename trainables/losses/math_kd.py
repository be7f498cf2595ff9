"""KD (Hinton et al.): the KL baseline (methods §1).

    KD = T² · mean_b KL(p_t^T ‖ p_s^T) = T² · mean_b Σ_j p_t^T(j) · (log p_t^T(j) − log p_s^T(j))

with ``p^T = softmax(z / T)``, the teacher detached. "Batch mean" = sum over classes,
mean over the batch (not ``kl_div(reduction="mean")``, which also divides by C).

Paper: G. Hinton, O. Vinyals, J. Dean, *Distilling the knowledge in a neural network*,
arXiv:1503.02531, 2015 [KD].
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.losses._math_common import _check_logits, _check_temperature

__all__ = ["kd"]


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: ``T² · mean_b KL(p_t^T ‖ p_s^T)`` (methods §1).

    Batch mean = sum over classes, mean over the batch (``kl_div(reduction="mean")``
    would also divide by C: the classic bug methods §1 warns about).

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``, detached here.
        temperature: T (published CIFAR default 4, methods §1; set by ``KDParams``).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    log_ps = torch.log_softmax(student_logits / temperature, dim=1)
    log_pt = torch.log_softmax(teacher_logits.detach() / temperature, dim=1)
    # p_t·(log p_t − log p_s) with log-softmax on both sides: finite even when p_t underflows
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return temperature**2 * kl.mean()
