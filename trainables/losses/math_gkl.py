"""GKL / IKL: generalized (decoupled) KL (methods §7).

KL equals, in gradient, a weighted MSE between pairwise logit differences plus a soft
cross-entropy; GKL lets the student's differences receive gradient and smooths the
weights:

    wMSE    = ¼ Σ_b Σ_jk w_jk (Δ^t_jk − Δ^s_jk)² / N,   Δ_jk = z_j − z_k,  w_jk = s_j^γ s_k^γ
    soft_ce = −mean_b Σ_j p_t^T(j) log p_s^T(j)
    GKL     = α · wMSE + β · soft_ce                     (weights: ``GKLParams``)

``s`` = class-level prior (GI) or per-sample ``softmax(z_t / T2)``; ``N = Σ_b Σ_jk w_jk``
(GKL) or ``B`` (IKL, γ = 1); computed in O(B·C) by an exact identity.

Paper: J. Cui et al., *Generalized Kullback-Leibler Divergence Loss*, arXiv:2503.08038
[GKL]; J. Cui et al., *Decoupled Kullback-Leibler Divergence Loss*, NeurIPS 2024 [DKL].
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.losses._math_common import _check_logits, _check_temperature

__all__ = ["gkl"]


def gkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float,
    pair_weight_exponent: float,
    class_prior: Tensor | None,
    prior_temperature: float,
    normalize: str = "weight",
) -> tuple[Tensor, Tensor]:
    """GKL / IKL parts ``(wmse, soft_ce)`` in the paper's naming (methods §7).

    ``wMSE = ¼ Σ_b Σ_jk w_jk (Δ^t_jk − Δ^s_jk)² / N`` with ``Δ_jk = z_j − z_k`` on raw
    logits (no T), gradient into the student through Δ^s, detached weights
    ``w_jk = s_j^γ s_k^γ``; ``s = class_prior[target]`` (GI) or, when ``class_prior`` is
    None, the per-sample ``softmax(z_t / prior_temperature)``. ``N = Σ_b Σ_jk w_jk``
    (``normalize="weight"``, GKL) or ``B`` (``"batch"``, IKL with γ = 1).
    Computed in O(B·C) by the exact identity of methods §7:
    ``Σ_jk w_j w_k (d_j − d_k)² = 2 S Σ_j w_j (d_j − d̄)²`` with ``d = z_t − z_s``,
    ``S = Σ_j w_j``, ``d̄ = Σ_j w_j d_j / S`` (not the paper's Algorithm 2, which is
    wrong unless Σ_j w_j = 1). ``soft_ce = −mean_b Σ_j p_t^T(j) log p_s^T(j)``, no T².
    The total ``wmse_weight·wmse + soft_ce_weight·soft_ce`` (α, β) and the warm-up are the
    caller's (``GKLParams``; the released configs swap the names α/β — methods §7).

    Args:
        temperature: T of soft_ce (CIFAR 4, ImageNet 1).
        pair_weight_exponent: γ ≥ 0, the exponent of the pair weights (0: uniform weights).
        class_prior: ``[C, C]`` class-mean teacher probabilities (row c for class c) or None.
        prior_temperature: T2 of the per-sample weights (used when ``class_prior`` is None).
        normalize: ``"weight"`` (GKL) or ``"batch"`` (IKL).
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    _check_temperature(prior_temperature, "prior_temperature")
    if pair_weight_exponent < 0:
        raise ValueError(f"pair_weight_exponent must be >= 0, got {pair_weight_exponent}")
    if normalize not in ("weight", "batch"):
        raise ValueError(f"normalize must be 'weight' or 'batch', got {normalize!r}")
    B, C = student_logits.shape
    zt = teacher_logits.detach()
    with torch.no_grad():
        if class_prior is not None:
            if class_prior.shape != (C, C):
                raise ValueError(f"class_prior must be [{C}, {C}], got {tuple(class_prior.shape)}")
            s = class_prior.detach().to(zt)[target.long()]
        else:
            s = torch.softmax(zt / prior_temperature, dim=1)
        w = s.pow(pair_weight_exponent)  # 0^0 = 1: γ = 0 gives uniform weights even for zero priors
        S = w.sum(1)
    d = zt.to(student_logits.dtype) - student_logits
    d_bar = (w * d).sum(1, keepdim=True) / S[:, None]
    num = (2.0 * S * (w * (d - d_bar) ** 2).sum(1)).sum()
    denom = (S * S).sum() if normalize == "weight" else torch.tensor(float(B), dtype=num.dtype)
    wmse = 0.25 * num / denom

    log_ps = torch.log_softmax(student_logits / temperature, dim=1)
    pt = torch.softmax(zt / temperature, dim=1)
    soft_ce = -(pt * log_ps).sum(1).mean()
    return wmse, soft_ce
