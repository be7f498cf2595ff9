"""DKD (decoupled KD): target / non-target split of KD (methods §2), and the
alignment diagnostics of the WKL figures (methods §6) built on it.

With ``b^T = [p^T(y), 1 − p^T(y)]`` and ``q^T`` the softmax over the non-target
classes only (class y removed, renormalised):

    TCKD = T² · mean_b KL(b_t ‖ b_s)        NCKD = T² · mean_b KL(q_t ‖ q_s)
    DKD  = α · TCKD + β · NCKD               (α, β, warm-up: ``DKDParams``)

Identity: ``KD/T² = TCKD/T² + (1 − p_t^T(y)) · NCKD/T²`` per sample.

Paper: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, *Decoupled knowledge
distillation*, CVPR 2022 [DKD]; diagnostics: *Stage-Adaptive Knowledge Distillation
via KL-Wasserstein Hybrid Distribution Alignment* [WKL].
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.losses._math_common import (
    _check_logits,
    _check_temperature,
    _nontarget_log_softmax,
    _target_mask,
)
from trainables.losses.math_kd import kd

__all__ = ["dkd", "alignment_diagnostics"]


def _dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) without T² (methods §2), shape ``[B]`` each."""
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    num_classes = student_logits.shape[1]
    if num_classes <= 2:
        raise ValueError(
            f"DKD needs at least 3 classes: with C = {num_classes} the non-target "
            "distribution has a single class (C = 2) or none, so NCKD is undefined "
            "(methods §2). Use KD for binary problems."
        )
    mask = _target_mask(target, num_classes)
    zs = student_logits / temperature
    zt = teacher_logits.detach() / temperature

    def binary_logs(z: Tensor) -> tuple[Tensor, Tensor]:
        # log p(y) and log(1 − p(y)) from log-sum-exps: exact, no 1 − p cancellation
        lse_all = torch.logsumexp(z, dim=1)
        lse_nt = torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)
        log_py = z.gather(1, target.long()[:, None]).squeeze(1) - lse_all
        return log_py, lse_nt - lse_all

    ls_y, ls_n = binary_logs(zs)
    lt_y, lt_n = binary_logs(zt)
    tckd = lt_y.exp() * (lt_y - ls_y) + lt_n.exp() * (lt_n - ls_n)

    log_qs = _nontarget_log_softmax(zs, mask)
    log_qt = _nontarget_log_softmax(zt, mask)
    qt = log_qt.exp().masked_fill(mask, 0.0)  # zero mass at y: its (finite) log terms drop out
    nckd = (qt * (log_qt - log_qs)).sum(dim=1)
    return tckd, nckd


def dkd(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Decoupled KD parts ``(TCKD, NCKD)``, each ``T² ·`` batch mean (methods §2).

    ``b = [p^T(y), 1 − p^T(y)]``, ``TCKD = T²·mean_b KL(b_t ‖ b_s)``;
    ``NCKD = T²·mean_b KL(q_t ‖ q_s)`` over the renormalised non-target classes.
    The weights α, β and the warm-up are applied by the caller (``DKDParams``).
    Identity: ``KD/T² = TCKD/T² + (1 − p_t^T(y))·NCKD/T²`` per sample.

    Raises:
        ValueError: for C ≤ 2, where NCKD is undefined (methods §2).
    """
    tckd, nckd = _dkd_terms(student_logits, teacher_logits, target, temperature)
    t2 = temperature**2
    return t2 * tckd.mean(), t2 * nckd.mean()


def alignment_diagnostics(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> dict[str, Tensor]:
    """Per-batch alignment diagnostics in the units of the WKL figures (methods §6).

    Returns ``{"kl": KL(p_t^T‖p_s^T) batch mean (no T²), "tc": T²·TCKD,
    "nc": 2·T²·NCKD}`` (β = 2 is built into the published ``loss_nc``), computed under
    ``no_grad``. For C ≤ 2 the NCKD-based entries are NaN (undefined, methods §2) rather
    than an exception, because the loop calls this for every loss.
    """
    with torch.no_grad():
        kl = kd(student_logits, teacher_logits, temperature) / temperature**2
        if student_logits.shape[1] <= 2:
            nan = torch.full_like(kl, float("nan"))
            return {"kl": kl, "tc": nan, "nc": nan}
        tc, nc = dkd(student_logits, teacher_logits, target, temperature)
        return {"kl": kl, "tc": tc, "nc": 2.0 * nc}
