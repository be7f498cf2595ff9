"""Feature-distribution math: WKD-F, the category-interrelation cost and KD²M distances.

Pure tensor functions (no module state), re-exported by ``functional.py``. Every
numerically sensitive argument (``eps``, ``grid``, ``diagonal``, ``ridge``, ``beta``)
is required: the published defaults live in the Params dataclasses, with their source.

Conventions shared by all functions here:

* the teacher side is always detached (methods.md, notation); gradients flow
  into the student input only;
* inputs may be float32 or float64; the result has the promoted dtype of the
  inputs (float64 in -> float64 out);
* the Gaussian distances compute their statistics in float64 internally and cast
  back, because ``Tr Σs + Tr Σt − 2 Tr(...)^½`` is a difference of large, nearly
  equal numbers when the distributions are close;
* nothing is moved with ``.cuda()``: results stay on the inputs' device (the exact
  OT plan is solved by POT on the CPU and copied back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ot
import torch
from torch import Tensor

# Upper bound on the number of elements of one intermediate block in
# ``category_cost`` (2**24 float64 = 128 MB): keeps C = 1000 classes tractable on
# a small machine without changing the result (chunking is exact).
_BLOCK_ELEMENTS = 1 << 24

# Below this many pairwise elements the squared distances are computed from the
# explicit differences (exact, no cancellation); above it from the expansion
# ‖a‖² + ‖b‖² − 2ab, which needs no [n, m, d] buffer.
_DIRECT_DIST_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _result_dtype(*tensors: Tensor) -> torch.dtype:
    """Promoted floating dtype of the inputs (float32 at least)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"expected floating-point tensors, got {dtype}")
    # Half precision statistics are too coarse for variances / OT costs.
    return torch.promote_types(dtype, torch.float32)


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 instead of ``inf``.

    A channel that is constant over a cell / batch (dead ReLU) has variance 0; the
    plain ``sqrt`` backward would give ``inf * 0 = NaN``. The double ``where`` keeps
    the value exact and picks the zero subgradient there.
    """
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(x))


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


# ---------------------------------------------------------------------------
# WKD-F (methods.md §4)
# ---------------------------------------------------------------------------


def _cell_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """Adaptive-pooling cells ``[⌊i·size/G⌋, ⌈(i+1)·size/G⌉)`` (methods.md §4)."""
    return [((i * size) // grid, -((-(i + 1) * size) // grid)) for i in range(grid)]


class _EqualCellMeanStd(torch.autograd.Function):
    """Per-cell mean and ``sqrt(var_unbiased + eps)`` of equal cells, with a fused backward.

    Input: the ``[B, C, G, h, G, w]`` view of a map whose cells are ``[h, w]`` blocks
    (``H = G·h``, ``W = G·w``). Outputs ``(μ, σ)`` keep the reduced dims (size 1) so
    they broadcast against the input.

    Why a Function: autograd through ``mean`` and ``var`` stores and materialises
    several full-size tensors in the backward (``x − μ``, its scaled copies, the
    expanded mean gradient, their sum). Here the forward keeps only the input (already
    alive) and the per-cell statistics, and the backward writes the input gradient in
    one ``addcmul``, from ``∂μ/∂x = 1/n`` and ``∂σ/∂x = (x − μ)/((n − 1)σ)``:

    ``∂L/∂x = (g_μ/n − c·μ) + c·x``  with  ``c = g_σ / ((n − 1)σ)``,

    and ``c = 0`` where ``σ = 0`` (a constant cell with ``eps = 0``: the zero
    subgradient :func:`_safe_sqrt` picks). Peak extra memory is the gradient itself.
    First-order only (``once_differentiable``): no loss here needs double backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, cells: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        n = cells.shape[3] * cells.shape[5]
        mean = cells.mean(dim=(3, 5), keepdim=True)
        # Two passes (mean, then squared deviations): exact where Σx² − nμ² would cancel,
        # and ~15× faster on CPU than torch.var's Welford kernel on 64-element cells.
        # The one full-size temporary is freed before the backward allocates anything.
        var = (cells - mean).pow_(2).sum(dim=(3, 5), keepdim=True) / (n - 1)
        sd = _safe_sqrt(var + eps)
        ctx.save_for_backward(cells, mean, sd)
        ctx.n = n
        return mean, sd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g_mean: Tensor, g_sd: Tensor
    ) -> tuple[Tensor, None]:
        cells, mean, sd = ctx.saved_tensors
        n = ctx.n
        positive = sd > 0
        coef = torch.where(positive, g_sd / ((n - 1) * torch.where(positive, sd, 1.0)), 0.0)
        shift = g_mean / n - coef * mean
        return torch.addcmul(shift, cells, coef), None


def _cell_mean_std(x: Tensor, grid: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per (sample, channel, cell) mean and ``sqrt(var_unbiased + eps)`` (methods.md §4).

    Equal cells (``G`` divides ``H`` and ``W``, e.g. the published G = 1 and G = 4 on
    8×8): shape ``[B, C, G, 1, G, 1]`` from :class:`_EqualCellMeanStd` (one pass, fused
    backward). Otherwise the overlapping adaptive cells are looped over (G² slices,
    plain autograd), shape ``[B, C, G, G]``. Callers only sum over differences of
    like-shaped statistics, so the two layouts are interchangeable.
    """
    b, c, h, w = x.shape
    if h % grid == 0 and w % grid == 0:
        cells = x.reshape(b, c, grid, h // grid, grid, w // grid)
        return _EqualCellMeanStd.apply(cells, eps)
    rows, cols = _cell_bounds(h, grid), _cell_bounds(w, grid)
    means, variances = [], []
    for r0, r1 in rows:
        for c0, c1 in cols:
            cell = x[:, :, r0:r1, c0:c1]
            means.append(cell.mean(dim=(2, 3)))
            variances.append(cell.var(dim=(2, 3), correction=1))
    mean = torch.stack(means, dim=-1).reshape(b, c, grid, grid)
    var = torch.stack(variances, dim=-1).reshape(b, c, grid, grid)
    return mean, _safe_sqrt(var + eps)


def wkd_feature(
    student_feat: Tensor, teacher_feat: Tensor, grid: int, eps: float
) -> tuple[Tensor, Tensor]:
    """WKD-F's two terms: diagonal-Gaussian W2² between feature maps, per grid cell.

    methods.md §4 (WKD, Lv et al., NeurIPS 2024, Eq. for WKD-F with the released
    ``wkd_feature_loss``): split ``H×W`` into a ``G×G`` grid of adaptive cells (rows
    ``[⌊iH/G⌋, ⌈(i+1)H/G⌉)``, same for columns, exactly like adaptive pooling); per
    cell and channel ``μ`` and ``σ = sqrt(var_unbiased + eps)``;

    ``L_mean = Σ (μ_s − μ_t)² / (G²·B)``,  ``L_std = Σ (σ_s − σ_t)² / (G²·B)``

    (sum over batch, channels and cells). The loss is ``ρ·L_mean + L_std``; the
    weighting is the caller's.

    Args:
        student_feat: ``[B, C, H, W]`` projected student map (differentiable).
        teacher_feat: ``[B, C, H, W]`` teacher map (detached here).
        grid: ``G`` — published 1 for RN32x4→RN8x4, 4 for WRN40-2→SNV1 (§4).
        eps: added to the unbiased variance before the square root — published
            ``1e-5`` (``cfg.WKD.EPS``).

    Returns:
        ``(L_mean, L_std)`` as 0-d tensors of the inputs' promoted dtype.

    Raises:
        ValueError: shapes differ / are not 4-D, ``grid`` is out of range, a cell has
            fewer than 2 elements (unbiased variance undefined), or ``eps < 0``.
    """
    if student_feat.dim() != 4 or student_feat.shape != teacher_feat.shape:
        raise ValueError(
            "wkd_feature needs two [B, C, H, W] maps of equal shape; got "
            f"student {tuple(student_feat.shape)}, teacher {tuple(teacher_feat.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    b, _, h, w = student_feat.shape
    if not 1 <= grid <= min(h, w):
        raise ValueError(f"grid must be in [1, min(H, W)] = [1, {min(h, w)}], got {grid}")
    smallest = min(r1 - r0 for r0, r1 in _cell_bounds(h, grid)) * min(
        c1 - c0 for c0, c1 in _cell_bounds(w, grid)
    )
    if smallest < 2:
        raise ValueError(
            f"grid {grid} on a {h}x{w} map leaves cells with one element: "
            "the unbiased variance is undefined"
        )
    dtype = _result_dtype(student_feat, teacher_feat)
    mu_s, sd_s = _cell_mean_std(student_feat.to(dtype), grid, eps)
    mu_t, sd_t = _cell_mean_std(teacher_feat.detach().to(dtype), grid, eps)
    norm = grid * grid * b
    return (mu_s - mu_t).pow(2).sum() / norm, (sd_s - sd_t).pow(2).sum() / norm


# ---------------------------------------------------------------------------
# Category-interrelation cost (methods.md §5)
# ---------------------------------------------------------------------------


def _stack_classes(features_by_class: Tensor | Sequence[Tensor]) -> Tensor:
    """``[C, n, d]`` from a tensor or a sequence of ``[n_c, d]``, truncated to ``min n_c``."""
    if isinstance(features_by_class, Tensor):
        if features_by_class.dim() != 3:
            raise ValueError(
                f"category_cost expects [C, n, d]; got {tuple(features_by_class.shape)}"
            )
        return features_by_class
    mats = list(features_by_class)
    if not mats:
        raise ValueError("category_cost needs at least one class")
    if any(m.dim() != 2 for m in mats) or len({m.shape[1] for m in mats}) != 1:
        raise ValueError(
            "category_cost expects per-class matrices [n_c, d] with one d; got "
            f"{[tuple(m.shape) for m in mats[:5]]}..."
        )
    # Rows are paired by index across classes (image, position): keep the first
    # min n_c of each class (methods.md §5: "truncate to the smallest class").
    n = min(m.shape[0] for m in mats)
    return torch.stack([m[:n] for m in mats])


def category_cost(
    features_by_class: Tensor | Sequence[Tensor], *, block_elements: int = _BLOCK_ELEMENTS
) -> Tensor:
    """Offline category-interrelation cost ``D = 1 − CKA`` between classes (methods.md §5).

    WKD (Lv et al., NeurIPS 2024), "category interrelation" from the teacher's
    last-stage features: ``X_c`` has one row per (image, spatial position) and one
    column per channel, rows paired by index across classes. Columns are centred and

    ``CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F)``,  ``D_ij = 1 − CKA(X_i, X_j)``.

    Computation (exact, chunked): when ``n <= d`` through the centred Gram matrices
    ``K_c = X_c X_cᵀ`` (``‖YᵀX‖_F² = <K_x, K_y>_F``, ``‖XᵀX‖_F = ‖K_x‖_F``), i.e. one
    ``[C, n²] @ [n², C]`` product of unit-norm Grams — memory ``C·n² <= C·n·d``; when
    ``n > d`` through the cross-covariances ``X_iᵀ X_j`` in blocks (cost ``C²·n·d²``:
    cap the images per class, e.g. 50 for 1000 classes as §5 advises).

    Args:
        features_by_class: ``[C, n, d]`` or a sequence of ``[n_c, d]`` (truncated to
            the smallest ``n_c``).
        block_elements: cap on the elements of one intermediate block (memory only;
            the result does not depend on it — default ``2**24``, 128 MB in float64).

    Returns:
        ``[C, C]`` tensor, exactly symmetric, exact zero diagonal, clamped to
        ``[0, 1]``; float64 if the input is float64, else float32 (computed in the
        same precision: float32 is ample for a cost stored as float32).

    Raises:
        ValueError: bad shapes, fewer than 2 rows, or a class whose centred features
            are all zero (CKA undefined).
    """
    x = _stack_classes(features_by_class)
    n_classes, n, d = x.shape
    if n < 2:
        raise ValueError(f"category_cost needs at least 2 rows per class, got {n}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32

    def centred(chunk: slice) -> Tensor:
        xc = x[chunk].to(work)
        return xc - xc.mean(dim=1, keepdim=True)

    def check_norms(norms: Tensor, start: int) -> None:
        bad = torch.nonzero(norms <= 0).flatten()
        if bad.numel():
            raise ValueError(f"class {start + int(bad[0])} has constant features: CKA is undefined")

    if n <= d:
        # Gram path: per class the unit-Frobenius-norm centred Gram, flattened.
        step = max(1, block_elements // (n * max(n, d)))
        grams = []
        for start in range(0, n_classes, step):
            xc = centred(slice(start, start + step))
            k = (xc @ xc.mT).flatten(1)
            norms = k.norm(dim=1)
            check_norms(norms, start)
            grams.append(k / norms[:, None])
        v = torch.cat(grams)
        sim = v @ v.mT
    else:
        # Cross path: scale X_c so that ‖X_cᵀX_c‖_F = 1, then CKA_ij = ‖X_iᵀX_j‖_F².
        scaled = []
        step = max(1, block_elements // (d * max(n, d)))
        for start in range(0, n_classes, step):
            xc = centred(slice(start, start + step))
            norms = (xc.mT @ xc).flatten(1).norm(dim=1)
            check_norms(norms, start)
            scaled.append(xc / norms.sqrt()[:, None, None])
        xs = torch.cat(scaled)  # [C, n, d]
        # Blocks of classes: [bi·d, n] @ [n, bj·d] is one large matmul per block pair.
        blk = max(1, int((block_elements / (d * d)) ** 0.5))
        flat = xs.permute(1, 0, 2)  # [n, C, d]
        rows = []
        for i0 in range(0, n_classes, blk):
            xi = flat[:, i0 : i0 + blk].reshape(n, -1)
            row = []
            for j0 in range(0, n_classes, blk):
                xj = flat[:, j0 : j0 + blk].reshape(n, -1)
                cross = (xi.mT @ xj).reshape(xi.shape[1] // d, d, xj.shape[1] // d, d)
                row.append(cross.pow(2).sum(dim=(1, 3)))
            rows.append(torch.cat(row, dim=1))
        sim = torch.cat(rows)

    # Exact symmetry and zero diagonal by construction, not by luck of rounding.
    dist = (1.0 - 0.5 * (sim + sim.mT)).clamp(0.0, 1.0)
    eye = torch.eye(n_classes, dtype=torch.bool, device=dist.device)
    dist = torch.where(eye, torch.zeros_like(dist), dist)
    return dist.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


# ---------------------------------------------------------------------------
# KD²M: batch-level feature distribution matching (methods.md §8)
# ---------------------------------------------------------------------------


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
    beta: float,
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
        beta: logit-cost weight ``β`` (no published value; the Params state theirs).
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
    cost = feat_cost / scale + beta * logit_part
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
