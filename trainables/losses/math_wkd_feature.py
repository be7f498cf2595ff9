"""WKD-F and the category-interrelation cost: the feature side of WKD (methods §4, §5).

WKD-F, per ``G×G`` grid of adaptive cells, channel-wise diagonal Gaussians
``N(μ, σ²)`` with ``σ = sqrt(var_unbiased + eps)``; their W2² splits into

    L_mean = Σ (μ_s − μ_t)² / (G²·B),   L_std = Σ (σ_s − σ_t)² / (G²·B),
    L = ρ · L_mean + L_std              (weighting: the caller's, ``WKDFParams``)

Category-interrelation cost of WKD-L (offline, from the teacher's features; [CKA]):

    CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F),   D_ij = 1 − CKA(X_i, X_j)

Paper: J. Lv, H. Yang, P. Li, *Wasserstein Distance Rivals Kullback-Leibler Divergence
for Knowledge Distillation*, NeurIPS 2024 [WKD]; C. Cortes, M. Mohri,
A. Rostamizadeh, *Algorithms for learning kernels based on centered alignment*,
JMLR 2012 [CKA]. Teacher side detached; results in the inputs' promoted dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from trainables.losses._math_common import _result_dtype, _safe_sqrt

__all__ = ["wkd_feature", "category_cost"]

# Upper bound on the number of elements of one intermediate block in
# ``category_cost`` (2**24 float64 = 128 MB): keeps C = 1000 classes tractable on
# a small machine without changing the result (chunking is exact).
_BLOCK_ELEMENTS = 1 << 24


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
        ctx: Any, cells: Tensor, eps: float
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
        ctx: Any, g_mean: Tensor, g_sd: Tensor
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
