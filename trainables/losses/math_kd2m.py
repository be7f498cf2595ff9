"""KD²M: feature distribution matching over the batch (methods §8).

The batch's pooled features ``F_s, F_t ∈ R^{n×d}`` are samples of two distributions;
``L = CE + λ_d · D(F_s, F_t)`` with D one of:

    w2           Σ_ij π_ij ‖f_s,i − f_t,j‖²,  π = ot.emd(1/n_s, 1/n_t, C.detach())
    cw2          (1/n_c) Σ_y W2²(F_s|y, F_t|y)                       (classes present)
    jw2          Σ_ij π_ij (‖f_s,i − f_t,j‖² / max(·) + β · ℓ(z_s,i, z_t,j))
    gaussian_w2  ‖μ_s − μ_t‖² + Tr(Σ_s + Σ_t − 2 (Σ_s^½ Σ_t Σ_s^½)^½)   (Bures–Wasserstein)
    gaussian_cw2 (1/n_c) Σ_y gaussian_w2(F_s|y, F_t|y)
    gaussian_kl  ½ [Tr(Σ_t⁻¹Σ_s) + (μ_t − μ_s)ᵀ Σ_t⁻¹ (μ_t − μ_s) − d + ln det Σ_t − ln det Σ_s]

Gradients flow through the cost only (envelope theorem); the teacher is detached; the
Gaussian forms compute in float64 and cast back; exact OT plans are solved by POT on
the CPU and copied back to the inputs' device.

Paper: E. F. Montesuma, *KD²M: A unifying framework for feature knowledge
distillation*, GSI 2025 [KD2M].
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from trainables.losses._math_common import _result_dtype, _safe_sqrt

__all__ = [
    "LOGIT_COSTS",
    "w2_empirical",
    "cw2",
    "jw2",
    "gaussian_w2",
    "gaussian_cw2",
    "gaussian_kl",
]

# Below this many pairwise elements the squared distances are computed from the
# explicit differences (exact, no cancellation); above it from the expansion
# ‖a‖² + ‖b‖² − 2ab, which needs no [n, m, d] buffer.
_DIRECT_DIST_ELEMENTS = 1 << 22


def _check_pair(fs: Tensor, ft: Tensor, name: str = "features") -> None:
    if fs.dim() != 2 or ft.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D [n, d]; got student {tuple(fs.shape)}, teacher {tuple(ft.shape)}"
        )
    if fs.shape[1] != ft.shape[1]:
        raise ValueError(
            f"{name} dimensions differ: student {tuple(fs.shape)}, teacher {tuple(ft.shape)}"
        )
    if fs.shape[0] < 1 or ft.shape[0] < 1:
        raise ValueError(f"{name} need at least one sample each")


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise ``‖a_i − b_j‖²`` as an ``[n, m]`` matrix, differentiable w.r.t. both."""
    if a.shape[0] * b.shape[0] * a.shape[1] <= _DIRECT_DIST_ELEMENTS:
        return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    # Expansion for large batches; clamp the tiny negatives cancellation can give.
    sq = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.mT)
    return sq.clamp_min(0.0)


def _exact_plan(cost: Tensor) -> Tensor:
    """Exact OT plan with uniform marginals for a (detached) cost matrix, via ``ot.emd``.

    Solved in float64 on the CPU (POT's network simplex); the plan is returned on the
    cost's device and dtype. No gradient flows through the plan: by the envelope
    theorem the gradient of ``min_π <π, C>`` is ``<π*, dC>``, i.e. through C only.
    """
    n, m = cost.shape
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    cost_np = cost.detach().to(device="cpu", dtype=torch.float64).numpy()
    # POT's default iteration cap (1e5) can be reached for n ≳ 300; raise it so the
    # plan is optimal rather than silently truncated.
    plan = ot.emd(a, b, cost_np, numItermax=max(100_000, 20 * n * m))
    return torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)


def _centred_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row mean ``μ`` and the centred samples ``x − μ`` (population statistics)."""
    mu = x.mean(dim=0)
    return mu, x - mu


def w2_empirical(fs: Tensor, ft: Tensor) -> Tensor:
    """Empirical squared 2-Wasserstein distance between two batches (methods.md §8).

    KD²M (Montesuma, "KD²M: a unifying framework for feature knowledge
    distillation"): uniform weights ``1/n_s``, ``1/n_t``; cost
    ``C_ij = ‖f_s,i − f_t,j‖²``; exact plan ``π = ot.emd(a, b, C.detach())``; loss
    ``Σ_ij π_ij C_ij``. The gradient flows through ``C`` only (envelope theorem:
    it is the gradient of the optimal value wherever the plan is unique).

    Args:
        fs: ``[n_s, d]`` student features (differentiable).
        ft: ``[n_t, d]`` teacher features (detached here).

    Returns:
        0-d tensor, the inputs' promoted dtype.
    """
    _check_pair(fs, ft)
    dtype = _result_dtype(fs, ft)
    cost = _squared_distances(fs.to(dtype), ft.detach().to(dtype))
    return (_exact_plan(cost) * cost).sum()


def cw2(fs: Tensor, ft: Tensor, labels: Tensor) -> Tensor:
    """Class-conditional empirical W2²: mean over the classes present (methods.md §8).

    For each class ``c`` in ``labels``, the empirical W2² (:func:`w2_empirical`, so
    weights ``1/n_c``) between the student and teacher features of the samples of
    class ``c``; then the mean over classes present — the KD²M slides' 1/n_c
    normalisation, not the released code's sum over classes (§8).

    Args:
        fs: ``[n, d]`` student features; ``ft``: ``[n, d]`` teacher features of the
            same images (row i of both belongs to sample i).
        labels: ``[n]`` integer class labels.
    """
    _check_pair(fs, ft)
    if fs.shape[0] != ft.shape[0] or labels.shape != (fs.shape[0],):
        raise ValueError(
            "cw2 needs paired samples: student "
            f"{tuple(fs.shape)}, teacher {tuple(ft.shape)}, labels {tuple(labels.shape)}"
        )
    terms = [w2_empirical(fs[labels == c], ft[labels == c]) for c in torch.unique(labels)]
    return torch.stack(terms).mean()


LOGIT_COSTS = ("sqeuclidean", "kl")


def _pairwise_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``[n_s, n_t]`` matrix of ``KL(p_t,j ‖ p_s,i)`` between the softmaxes (T = 1).

    ``KL_ij = Σ_k p_t,jk (log p_t,jk − log p_s,ik)``: the teacher's prediction is the
    target, as in KD. Computed from log-softmaxes (no log 0); gradient into the student.
    """
    log_ps = torch.log_softmax(student_logits, dim=1)
    log_pt = torch.log_softmax(teacher_logits.detach(), dim=1)
    pt = log_pt.exp()
    neg_entropy_t = (pt * log_pt).sum(dim=1)  # [n_t]
    return neg_entropy_t[None, :] - log_ps @ pt.mT


def jw2(
    fs: Tensor,
    ft: Tensor,
    student_logits: Tensor,
    teacher_logits: Tensor,
    logit_cost_weight: float,
    logit_cost: str = "sqeuclidean",
) -> Tensor:
    """Joint (feature, logit) empirical W2² (methods.md §8, KD²M "JW2").

    Cost ``C_ij = ‖f_s,i − f_t,j‖² / max(·) + β·ℓ(z_s,i, z_t,j)`` where the feature
    part is divided by its *detached* maximum (scale-free, not a learnable shrink)
    and ``ℓ`` is, by ``logit_cost``, the squared Euclidean distance between logits
    (``"sqeuclidean"``, the §8 default) or the pairwise KL of their softmaxes
    (``"kl"``: ``KL(softmax(z_t,j) ‖ softmax(z_s,i))``, teacher as target). Exact plan on
    the detached cost, loss ``Σ π_ij C_ij``, gradient through ``C`` (both student
    features and logits). The released code compares the student with itself and has
    no β; this follows §8.

    Args:
        fs, ft: ``[n, d]`` student / teacher features (teacher detached).
        student_logits, teacher_logits: ``[n, K]`` logits (teacher detached).
        logit_cost_weight: β, the weight of the logit cost (no published value; see
            ``KD2MParams``).
        logit_cost: ``"sqeuclidean"`` or ``"kl"``.
    """
    _check_pair(fs, ft)
    _check_pair(student_logits, teacher_logits, name="logits")
    if student_logits.shape[0] != fs.shape[0] or teacher_logits.shape[0] != ft.shape[0]:
        raise ValueError("jw2: features and logits must have the same number of rows")
    if logit_cost not in LOGIT_COSTS:
        raise ValueError(f"jw2: logit_cost {logit_cost!r}; allowed: {', '.join(LOGIT_COSTS)}")
    dtype = _result_dtype(fs, ft, student_logits, teacher_logits)
    feat_cost = _squared_distances(fs.to(dtype), ft.detach().to(dtype))
    scale = feat_cost.detach().max()
    # All features identical -> the feature part is 0 anyway; avoid 0/0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zs, zt = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    if logit_cost == "kl":
        # KL >= 0 mathematically; clamp the rounding negatives of the difference form
        logit_part = _pairwise_kl(zs, zt).clamp_min(0.0)
    else:
        logit_part = _squared_distances(zs, zt)
    cost = feat_cost / scale + logit_cost_weight * logit_part
    return (_exact_plan(cost) * cost).sum()


def _psd_sqrt_no_grad(sigma: Tensor) -> Tensor:
    """Symmetric PSD square root by ``eigh`` with eigenvalues clamped at 0 (no autograd).

    Used only for the detached teacher covariance, so the eigenvector gradient
    (which has ``1/(λ_i − λ_j)`` factors and is undefined at repeated eigenvalues,
    e.g. the zero eigenvalues of a rank-deficient covariance) is never needed.
    """
    with torch.no_grad():
        evals, evecs = torch.linalg.eigh(sigma)
        return (evecs * evals.clamp_min(0.0).sqrt()[None, :]) @ evecs.mT


def gaussian_w2(fs: Tensor, ft: Tensor, diagonal: bool) -> Tensor:
    """Squared 2-Wasserstein distance between the Gaussian fits of two batches (§8).

    KD²M Gaussian W2² (Bures–Wasserstein), population (biased) statistics:

    * full: ``‖μ_s − μ_t‖² + Tr(Σ_s + Σ_t − 2 (Σ_s^½ Σ_t Σ_s^½)^½)``;
    * diagonal: ``‖μ_s − μ_t‖² + ‖σ_s − σ_t‖²`` (the published results rows).

    Stable differentiable form of the cross term: with centred samples ``X`` (rows)
    ``Σ = XᵀX/n`` and ``Tr(Σ_s^½ Σ_t Σ_s^½)^½ = ‖Σ_t^½ Σ_s^½‖_* = ‖X_t X_sᵀ‖_* / sqrt(n_s n_t)``
    (nuclear norm = sum of singular values; equal because ``Σ^½ = Xᵀ U Vᵀ/√n`` differs
    from ``Xᵀ`` by a partial isometry). For ``n <= d`` we take the nuclear norm of the
    small ``[n_t, n_s]`` matrix ``X_t X_sᵀ``; for ``n > d`` that of ``[d, n_s]``
    ``Σ_t^½ X_sᵀ/√n_s``, with ``Σ_t^½`` from a clamped ``eigh`` of the detached teacher
    covariance (no gradient needed). Either way the student enters linearly and the
    backward of a nuclear norm uses singular *values* only (``U Vᵀ``), which is
    well defined at repeated singular values — no matrix square root of the student
    covariance is ever differentiated (its ``eigh`` gradient would be infinite at
    the repeated zero eigenvalues of a batch with ``n < d``). At zero singular values
    (rank-deficient inputs beyond centring) the gradient is a valid subgradient.
    Rounding can make the Bures term a tiny negative number; it is clamped at 0.

    Args:
        fs: ``[n_s, d]`` student features (differentiable); ``ft``: ``[n_t, d]``
            teacher features (detached).
        diagonal: ``True`` for the diagonal form (KD²M's published Gaussian rows).
    """
    _check_pair(fs, ft)
    out_dtype = _result_dtype(fs, ft)
    mu_s, xs = _centred_stats(fs.to(torch.float64))
    mu_t, xt = _centred_stats(ft.detach().to(torch.float64))
    n_s, n_t, d = xs.shape[0], xt.shape[0], xs.shape[1]
    mean_term = (mu_s - mu_t).pow(2).sum()
    if diagonal:
        sd_s = _safe_sqrt(xs.pow(2).mean(dim=0))
        sd_t = _safe_sqrt(xt.pow(2).mean(dim=0))
        return (mean_term + (sd_s - sd_t).pow(2).sum()).to(out_dtype)
    trace_s = xs.pow(2).sum() / n_s
    trace_t = xt.pow(2).sum() / n_t
    if max(n_s, n_t) <= d:
        fidelity = torch.linalg.matrix_norm(xt @ xs.mT, ord="nuc") / (n_s * n_t) ** 0.5
    else:
        root_t = _psd_sqrt_no_grad(xt.mT @ xt / n_t)
        fidelity = torch.linalg.matrix_norm(root_t @ xs.mT, ord="nuc") / n_s**0.5
    bures = (trace_s + trace_t - 2.0 * fidelity).clamp_min(0.0)
    return (mean_term + bures).to(out_dtype)


def gaussian_cw2(fs: Tensor, ft: Tensor, labels: Tensor, diagonal: bool) -> Tensor:
    """Class-conditional Gaussian W2²: mean over the classes present (methods.md §8).

    KD²M's "CW2 (G)" row: ``(1/n_c) Σ_y W2²(N(μ_s|y, Σ_s|y), N(μ_t|y, Σ_t|y))`` — the
    slides' CW2 with each class-conditional distribution replaced by its Gaussian fit
    (population statistics), :func:`gaussian_w2` per class (``diagonal`` as there; the
    published Gaussian rows use the diagonal form), averaged over the classes present
    in the batch (the slides' 1/n_c). A class with one sample has zero spread: its term
    is the squared distance between the two samples.

    Args:
        fs: ``[n, d]`` student features; ``ft``: ``[n, d]`` teacher features of the
            same images (row i of both belongs to sample i).
        labels: ``[n]`` integer class labels.
        diagonal: ``True`` for the diagonal form.
    """
    _check_pair(fs, ft)
    if fs.shape[0] != ft.shape[0] or labels.shape != (fs.shape[0],):
        raise ValueError(
            "gaussian_cw2 needs paired samples: student "
            f"{tuple(fs.shape)}, teacher {tuple(ft.shape)}, labels {tuple(labels.shape)}"
        )
    terms = [gaussian_w2(fs[labels == c], ft[labels == c], diagonal) for c in torch.unique(labels)]
    return torch.stack(terms).mean()


def gaussian_kl(fs: Tensor, ft: Tensor, diagonal: bool, ridge: float) -> Tensor:
    """``KL(N_s ‖ N_t)`` between the Gaussian fits of two batches (methods.md §8).

    ``½ [Tr(Σ_t⁻¹Σ_s) + (μ_t − μ_s)ᵀ Σ_t⁻¹ (μ_t − μ_s) − d + ln det Σ_t − ln det Σ_s]``
    with population (biased) statistics as published, and ``Σ ← Σ + ε·I`` on both
    sides (``ε = ridge``). The full covariance is singular whenever ``n <= d``
    (batch 128, d = 512 in the published setting), so ``ridge > 0`` is required
    there; it is applied to the diagonal form too (to the variances), which keeps a
    dead feature dimension (variance 0) finite. §8 asks to state ε: the KD²M Params
    use ``ridge = 1e-4`` — our choice (the slides give none), small against the
    variances of pooled ReLU features (≈1e-2..1) yet bounding ``Σ_t⁻¹`` at 1e4.
    With ``n < d`` the full KL is dominated by the student's spread in the
    teacher's null space divided by ε, so it scales like ``1/ε``: tune the loss
    weight together with ε. Computed in float64 by Cholesky factors (the ridge
    makes both SPD; Cholesky's backward is stable for SPD input).

    Args:
        fs: ``[n_s, d]`` student (differentiable); ``ft``: ``[n_t, d]`` teacher (detached).
        diagonal: ``True`` for independent dimensions.
        ridge: ``ε >= 0`` added to the covariance diagonals.

    Raises:
        ValueError: ``ridge < 0``, or a covariance that is not positive definite
            (e.g. full form with ``ridge == 0`` and ``n <= d``).
    """
    _check_pair(fs, ft)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    out_dtype = _result_dtype(fs, ft)
    mu_s, xs = _centred_stats(fs.to(torch.float64))
    mu_t, xt = _centred_stats(ft.detach().to(torch.float64))
    n_s, n_t, d = xs.shape[0], xt.shape[0], xs.shape[1]
    diff = mu_s - mu_t
    if diagonal:
        var_s = xs.pow(2).mean(dim=0) + ridge
        var_t = xt.pow(2).mean(dim=0) + ridge
        if bool((var_s <= 0).any() | (var_t <= 0).any()):
            raise ValueError("gaussian_kl: a variance is 0; use ridge > 0")
        kl = 0.5 * (var_s / var_t + diff.pow(2) / var_t - 1.0 + var_t.log() - var_s.log()).sum()
        return kl.to(out_dtype)
    eye = torch.eye(d, dtype=torch.float64, device=xs.device)
    chol_s, info_s = torch.linalg.cholesky_ex(xs.mT @ xs / n_s + ridge * eye)
    chol_t, info_t = torch.linalg.cholesky_ex(xt.mT @ xt / n_t + ridge * eye)
    if int(info_s) != 0 or int(info_t) != 0:
        raise ValueError(
            f"gaussian_kl: covariance not positive definite (n_s={n_s}, n_t={n_t}, d={d}, "
            f"ridge={ridge}); use ridge > 0"
        )
    # Tr(Σ_t⁻¹ Σ_s) = ‖L_t⁻¹ L_s‖_F²,  Mahalanobis = ‖L_t⁻¹ (μ_s − μ_t)‖².
    whitened = torch.linalg.solve_triangular(chol_t, chol_s, upper=False)
    maha = torch.linalg.solve_triangular(chol_t, diff[:, None], upper=False)
    logdet_t = 2.0 * chol_t.diagonal().log().sum()
    logdet_s = 2.0 * chol_s.diagonal().log().sum()
    kl = 0.5 * (whitened.pow(2).sum() + maha.pow(2).sum() - d + logdet_t - logdet_s)
    return kl.to(out_dtype)
