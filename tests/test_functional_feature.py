"""Feature-distribution math (methods.md §4, §5, §8) and the WKD-F projectors.

Every value is checked against an independent formulation: literal numpy loops,
POT's solvers, ``torch.distributions`` or PyTorch's adaptive pooling; gradients
with ``torch.autograd.gradcheck`` in float64 on tiny problems.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import ot.gaussian
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from trainables.losses.math_kd2m import cw2, gaussian_kl, gaussian_w2, jw2, w2_empirical
from trainables.losses.math_wkd_feature import category_cost, wkd_feature
from trainables.losses.projector import Bottleneck, ConvReg, build_projector

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


# ---------------------------------------------------------------------------
# WKD-F
# ---------------------------------------------------------------------------


def _wkd_feature_loop(fs: np.ndarray, ft: np.ndarray, grid: int, eps: float) -> tuple[float, float]:
    """Literal per-cell loop with math.floor / math.ceil bounds and ddof=1 variance."""
    b, c, h, w = fs.shape
    mean_sum = std_sum = 0.0
    for n in range(b):
        for ch in range(c):
            for i in range(grid):
                r0, r1 = math.floor(i * h / grid), math.ceil((i + 1) * h / grid)
                for j in range(grid):
                    c0, c1 = math.floor(j * w / grid), math.ceil((j + 1) * w / grid)
                    cs, ct = fs[n, ch, r0:r1, c0:c1], ft[n, ch, r0:r1, c0:c1]
                    mean_sum += (cs.mean() - ct.mean()) ** 2
                    sd_s = math.sqrt(np.var(cs, ddof=1) + eps)
                    sd_t = math.sqrt(np.var(ct, ddof=1) + eps)
                    std_sum += (sd_s - sd_t) ** 2
    return mean_sum / (grid * grid * b), std_sum / (grid * grid * b)


@pytest.mark.parametrize(
    ("h", "w", "grid"),
    [(7, 5, 1), (7, 5, 2), (7, 5, 3), (8, 8, 2), (8, 8, 4), (6, 9, 3)],
)
def test_wkd_feature_matches_cell_loop(h: int, w: int, grid: int) -> None:
    fs = _randn(3, 4, h, w, seed=1)
    ft = _randn(3, 4, h, w, seed=2) * 1.5 + 0.3
    mean_term, std_term = wkd_feature(fs, ft, grid=grid, eps=1e-5)
    ref_mean, ref_std = _wkd_feature_loop(fs.numpy(), ft.numpy(), grid, 1e-5)
    assert mean_term.dtype == F64 and std_term.dtype == F64
    assert mean_term.item() == pytest.approx(ref_mean, rel=1e-12)
    assert std_term.item() == pytest.approx(ref_std, rel=1e-12)


@pytest.mark.parametrize(("h", "grid"), [(7, 3), (8, 4), (5, 2)])
def test_wkd_feature_cells_are_adaptive_pooling_cells(h: int, grid: int) -> None:
    # Independent check of the cell bounds: the mean term against a map of
    # zeros equals the squared adaptive average pool, summed / (G² B).
    fs = _randn(2, 3, h, h, seed=3)
    mean_term, _ = wkd_feature(fs, torch.zeros_like(fs), grid=grid, eps=1e-5)
    pooled = F.adaptive_avg_pool2d(fs, grid)
    assert mean_term.item() == pytest.approx(pooled.pow(2).sum().item() / (grid * grid * 2))


def test_wkd_feature_teacher_detached_and_dtype() -> None:
    fs = _randn(2, 3, 4, 4, seed=4, dtype=torch.float32).requires_grad_()
    ft = _randn(2, 3, 4, 4, seed=5, dtype=torch.float32).requires_grad_()
    mean_term, std_term = wkd_feature(fs, ft, grid=2, eps=1e-5)
    assert mean_term.dtype == torch.float32
    (mean_term + std_term).backward()
    assert ft.grad is None
    assert fs.grad is not None and torch.isfinite(fs.grad).all()
    # Identical maps give zero loss.
    same = wkd_feature(fs.detach(), fs.detach(), grid=2, eps=1e-5)
    assert same[0].item() == 0.0 and same[1].item() == 0.0


def test_wkd_feature_constant_cell_gradient_is_finite() -> None:
    # A dead channel (all zeros) with eps = 0: sqrt(0) must not give NaN gradients.
    fs = _randn(2, 2, 4, 4, seed=6)
    fs[:, 0] = 0.0
    fs.requires_grad_()
    _, std_term = wkd_feature(fs, _randn(2, 2, 4, 4, seed=7), grid=1, eps=0.0)
    std_term.backward()
    assert torch.isfinite(fs.grad).all()


@pytest.mark.parametrize(("h", "grid"), [(4, 2), (5, 2), (5, 3)])
def test_wkd_feature_gradcheck(h: int, grid: int) -> None:
    fs = _randn(2, 2, h, h, seed=8).requires_grad_()
    ft = _randn(2, 2, h, h, seed=9)
    assert gradcheck(lambda x: wkd_feature(x, ft, grid=grid, eps=1e-5), (fs,))


def _wkd_feature_pooled(
    fs: torch.Tensor, ft: torch.Tensor, grid: int, eps: float, rho: float
) -> torch.Tensor:
    """ρ·L_mean + L_std from adaptive average pools: var = n/(n−1)·(E[x²] − E[x]²)."""
    n = (fs.shape[2] // grid) * (fs.shape[3] // grid)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = F.adaptive_avg_pool2d(x, grid)
        var = (F.adaptive_avg_pool2d(x * x, grid) - m * m) * n / (n - 1)
        return m, torch.sqrt(var + eps)

    (ms, ss), (mt, st) = stats(fs), stats(ft)
    norm = grid * grid * fs.shape[0]
    return rho * (ms - mt).pow(2).sum() / norm + (ss - st).pow(2).sum() / norm


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_wkd_feature_fused_gradient_matches_pooled_autograd(grid: int) -> None:
    # The equal-cell path has a hand-written backward: compare it with autograd
    # through an independent (pooling, E[x²] − E[x]²) formulation, in float64 and
    # float32, including a constant cell (its σ-gradient is 0 at eps = 0).
    fs = _randn(3, 4, 8, 8, seed=21) * 1.3 + 0.2
    ft = _randn(3, 4, 8, 8, seed=22)
    x = fs.clone().requires_grad_()
    m, s = wkd_feature(x, ft, grid=grid, eps=1e-5)
    (4.0 * m + s).backward()
    y = fs.clone().requires_grad_()
    _wkd_feature_pooled(y, ft, grid, 1e-5, 4.0).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-12)

    x32 = fs.float().requires_grad_()
    m32, s32 = wkd_feature(x32, ft.float(), grid=grid, eps=1e-5)
    (4.0 * m32 + s32).backward()
    torch.testing.assert_close(x32.grad, y.grad.float(), rtol=1e-4, atol=1e-6)

    # constant channel 0 with eps = 0: only the mean term's gradient 2ρ(μs−μt)/(G²B·n)
    fc = fs.clone()
    fc[:, 0] = 0.7
    xc = fc.clone().requires_grad_()
    m0, s0 = wkd_feature(xc, ft, grid=grid, eps=0.0)
    (4.0 * m0 + s0).backward()
    n = (8 // grid) ** 2
    mu_t = F.adaptive_avg_pool2d(ft[:, :1], grid)
    expect = 4.0 * 2.0 * (0.7 - mu_t) / (grid * grid * 3 * n)
    expect = F.interpolate(expect, scale_factor=8 // grid, mode="nearest")
    torch.testing.assert_close(xc.grad[:, :1], expect, rtol=1e-9, atol=1e-12)
    yc = fc.clone().requires_grad_()
    _wkd_feature_pooled(yc, ft, grid, 0.0, 4.0).backward()
    torch.testing.assert_close(xc.grad[:, 1:], yc.grad[:, 1:], rtol=1e-9, atol=1e-12)


def test_wkd_feature_rejects_bad_input() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError):
        wkd_feature(x, torch.zeros(1, 1, 4, 5), grid=1, eps=1e-5)
    with pytest.raises(ValueError):
        wkd_feature(x, x, grid=5, eps=1e-5)
    with pytest.raises(ValueError, match="one element"):
        wkd_feature(x, x, grid=4, eps=1e-5)


# ---------------------------------------------------------------------------
# Category cost (CKA)
# ---------------------------------------------------------------------------


def _cka_loop(x: np.ndarray) -> np.ndarray:
    """Direct float64 linear CKA between every pair of classes (no Gram trick)."""
    c = x.shape[0]
    xc = [xi - xi.mean(axis=0, keepdims=True) for xi in x.astype(np.float64)]
    out = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            num = np.linalg.norm(xc[j].T @ xc[i]) ** 2
            den = np.linalg.norm(xc[i].T @ xc[i]) * np.linalg.norm(xc[j].T @ xc[j])
            out[i, j] = 1.0 - num / den
    return out


def _classes(c: int, n: int, d: int, seed: int) -> torch.Tensor:
    # Shared component + class-specific noise: CKA values spread inside (0, 1).
    base = _randn(1, n, d, seed=seed)
    return base + 0.8 * _randn(c, n, d, seed=seed + 1)


@pytest.mark.parametrize(("n", "d"), [(6, 10), (12, 3)])  # Gram path / cross path
@pytest.mark.parametrize("block_elements", [1 << 24, 40])  # one block / many blocks
def test_category_cost_matches_direct_cka(n: int, d: int, block_elements: int) -> None:
    x = _classes(5, n, d, seed=10)
    dist = category_cost(x, block_elements=block_elements)
    assert dist.dtype == F64
    np.testing.assert_allclose(dist.numpy(), _cka_loop(x.numpy()), atol=1e-12)
    assert torch.equal(dist, dist.T)
    assert torch.all(dist.diagonal() == 0)
    assert dist.min() >= 0 and dist.max() <= 1
    assert dist[~torch.eye(5, dtype=torch.bool)].min() > 0.05  # not trivially zero


@pytest.mark.parametrize(("n", "d"), [(6, 10), (12, 3)])
def test_category_cost_orthogonal_and_scale_invariance(n: int, d: int) -> None:
    x = _classes(4, n, d, seed=12)
    q, _ = torch.linalg.qr(_randn(d, d, seed=14))
    changed = x.clone()
    changed[1] = 3.7 * x[1] @ q  # rotate + isotropic scale one class
    changed[2] = x[2] @ q.T
    changed[3] = x[3] + 5.0  # column centring removes a shift
    torch.testing.assert_close(category_cost(changed), category_cost(x), rtol=0, atol=1e-12)


def test_category_cost_sequence_truncates_and_float32() -> None:
    x = _classes(3, 8, 5, seed=15).float()
    uneven = [torch.cat([x[0], torch.randn(4, 5)]), x[1], torch.cat([x[2], torch.randn(2, 5)])]
    dist = category_cost(uneven)
    assert dist.dtype == torch.float32
    torch.testing.assert_close(dist, category_cost(x))
    np.testing.assert_allclose(dist.numpy(), _cka_loop(x.double().numpy()), atol=1e-5)


def test_category_cost_thousand_classes_is_tractable() -> None:
    # ImageNet-size C with a small row count: the Gram path must stay cheap
    # (about a second here; the naive pairwise cross-covariance is C²·n·d² flops).
    x = torch.randn(1000, 50, 128, generator=_gen(16))
    dist = category_cost(x)
    assert dist.shape == (1000, 1000) and dist.dtype == torch.float32
    idx = [0, 1, 654, 655, 999]
    np.testing.assert_allclose(dist[idx][:, idx].numpy(), _cka_loop(x[idx].numpy()), atol=1e-5)


def test_category_cost_rejects_constant_class() -> None:
    x = _classes(3, 4, 6, seed=17)
    x[1] = 2.0
    with pytest.raises(ValueError, match="class 1"):
        category_cost(x)


@pytest.mark.parametrize(("n", "d"), [(4, 5), (5, 2)])
def test_category_cost_gradcheck(n: int, d: int) -> None:
    x = _classes(3, n, d, seed=18).requires_grad_()
    assert gradcheck(category_cost, (x,))


# ---------------------------------------------------------------------------
# KD²M: empirical W2², CW2², JW2²
# ---------------------------------------------------------------------------


def _emd2(xs: np.ndarray, xt: np.ndarray) -> float:
    cost = ot.dist(xs, xt, metric="sqeuclidean")
    return float(ot.emd2(ot.unif(len(xs)), ot.unif(len(xt)), cost))


@pytest.mark.parametrize(("n_s", "n_t"), [(7, 7), (6, 9)])
def test_w2_empirical_matches_pot(n_s: int, n_t: int) -> None:
    fs, ft = _randn(n_s, 4, seed=20), _randn(n_t, 4, seed=21) + 0.5
    assert w2_empirical(fs, ft).item() == pytest.approx(_emd2(fs.numpy(), ft.numpy()), rel=1e-12)
    # float32 in -> float32 out.
    assert w2_empirical(fs.float(), ft.float()).dtype == torch.float32


def test_w2_empirical_of_a_permutation_is_zero() -> None:
    ft = _randn(8, 3, seed=22)
    perm = torch.randperm(8, generator=_gen(23))
    assert w2_empirical(ft[perm], ft).item() == pytest.approx(0.0, abs=1e-14)


def test_w2_empirical_gradcheck_and_teacher_detached() -> None:
    fs = _randn(5, 3, seed=24).requires_grad_()
    ft = _randn(6, 3, seed=25).requires_grad_()
    assert gradcheck(lambda x: w2_empirical(x, ft), (fs,))
    w2_empirical(fs, ft).backward()
    assert ft.grad is None


def test_cw2_is_mean_of_per_class_w2() -> None:
    fs, ft = _randn(12, 3, seed=26), _randn(12, 3, seed=27)
    labels = torch.tensor([0, 2, 2, 5, 0, 5, 5, 2, 0, 0, 7, 2])
    expected = np.mean(
        [_emd2(fs[labels == c].numpy(), ft[labels == c].numpy()) for c in (0, 2, 5, 7)]
    )
    assert cw2(fs, ft, labels).item() == pytest.approx(expected, rel=1e-12)
    fs.requires_grad_()
    assert gradcheck(lambda x: cw2(x, ft, labels), (fs,))


def test_jw2_matches_pot_on_the_joint_cost() -> None:
    fs, ft = _randn(6, 4, seed=28), _randn(6, 4, seed=29)
    zs, zt = _randn(6, 3, seed=30), _randn(6, 3, seed=31)
    beta = 0.7
    feat = ot.dist(fs.numpy(), ft.numpy())
    cost = feat / feat.max() + beta * ot.dist(zs.numpy(), zt.numpy())
    expected = float(ot.emd2(ot.unif(6), ot.unif(6), cost))
    assert jw2(fs, ft, zs, zt, logit_cost_weight=beta).item() == pytest.approx(expected, rel=1e-12)


def test_jw2_gradients() -> None:
    fs, ft = _randn(5, 4, seed=32), _randn(5, 4, seed=33)
    zs, zt = _randn(5, 3, seed=34).requires_grad_(), _randn(5, 3, seed=35)
    # Logit side: a smooth function of z_s with the plan fixed -> gradcheck.
    assert gradcheck(lambda z: jw2(fs, ft, z, zt, logit_cost_weight=0.5), (zs,))
    # Feature side: the max normaliser is detached by definition, so compare with
    # the closed form 2/s · Σ_j π_ij (f_s,i − f_t,j) using POT's plan.
    fs_req = fs.clone().requires_grad_()
    jw2(fs_req, ft, zs.detach(), zt, logit_cost_weight=0.5).backward()
    feat = ot.dist(fs.numpy(), ft.numpy())
    plan = ot.emd(
        ot.unif(5), ot.unif(5), feat / feat.max() + 0.5 * ot.dist(zs.detach().numpy(), zt.numpy())
    )
    diff = fs.numpy()[:, None, :] - ft.numpy()[None, :, :]
    expected = 2.0 / feat.max() * (plan[:, :, None] * diff).sum(axis=1)
    np.testing.assert_allclose(fs_req.grad.numpy(), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Gaussian W2² and KL
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_s", "n_t", "d"), [(12, 10, 4), (9, 15, 3)])
def test_gaussian_w2_full_matches_pot(n_s: int, n_t: int, d: int) -> None:
    # n > d: covariances are full rank, POT's eigh-based Bures needs no ridge.
    fs = _randn(n_s, d, seed=40) @ _randn(d, d, seed=41)
    ft = _randn(n_t, d, seed=42) + 1.0
    pot = ot.gaussian.empirical_bures_wasserstein_distance(fs.numpy(), ft.numpy(), reg=0.0)
    # POT returns the distance, not its square.
    assert gaussian_w2(fs, ft, diagonal=False).item() == pytest.approx(float(pot) ** 2, rel=1e-10)


def _psd_sqrt_np(m: np.ndarray) -> np.ndarray:
    evals, evecs = np.linalg.eigh(m)
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def _bures_textbook(xs: np.ndarray, xt: np.ndarray) -> float:
    """‖μs−μt‖² + Tr(Σs + Σt − 2(Σs^½ Σt Σs^½)^½) with clamped-eigh square roots."""
    cs, ct = np.cov(xs.T, bias=True), np.cov(xt.T, bias=True)
    root = _psd_sqrt_np(cs)
    cross = _psd_sqrt_np(root @ ct @ root)
    return float(np.sum((xs.mean(0) - xt.mean(0)) ** 2) + np.trace(cs + ct - 2.0 * cross))


def test_gaussian_w2_full_singular_covariance() -> None:
    # n < d (the published regime): POT's sqrtm returns NaN below reg ≈ 1e-7 here,
    # so compare with the textbook formula (clamped eigh) and, loosely, with POT.
    fs, ft = _randn(5, 8, seed=43), _randn(6, 8, seed=44) + 1.0
    ours = gaussian_w2(fs, ft, diagonal=False).item()
    assert ours == pytest.approx(_bures_textbook(fs.numpy(), ft.numpy()), rel=1e-7)
    pot = ot.gaussian.empirical_bures_wasserstein_distance(fs.numpy(), ft.numpy(), reg=1e-6)
    assert ours == pytest.approx(float(pot) ** 2, rel=1e-4)


def test_gaussian_w2_diagonal_closed_form() -> None:
    fs, ft = _randn(9, 5, seed=45) * 2.0, _randn(11, 5, seed=46) + 0.4
    xs, xt = fs.numpy(), ft.numpy()
    expected = np.sum((xs.mean(0) - xt.mean(0)) ** 2) + np.sum((xs.std(0) - xt.std(0)) ** 2)
    assert gaussian_w2(fs, ft, diagonal=True).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("diagonal", [True, False])
def test_gaussian_w2_translation_and_dtype(diagonal: bool) -> None:
    ft = _randn(7, 4, seed=47)
    shift = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    value = gaussian_w2(ft + shift, ft, diagonal=diagonal)
    assert value.item() == pytest.approx(shift.pow(2).sum().item(), rel=1e-10)
    assert gaussian_w2(ft.float(), ft.float(), diagonal=diagonal).dtype == torch.float32


def test_gaussian_w2_one_dimension_full_equals_diagonal() -> None:
    fs, ft = _randn(8, 1, seed=48) * 3.0, _randn(6, 1, seed=49)
    full, diag = gaussian_w2(fs, ft, diagonal=False), gaussian_w2(fs, ft, diagonal=True)
    assert full.item() == pytest.approx(diag.item(), rel=1e-12)


@pytest.mark.parametrize(("n", "d", "diagonal"), [(8, 3, False), (4, 6, False), (6, 3, True)])
def test_gaussian_w2_gradcheck(n: int, d: int, diagonal: bool) -> None:
    fs = (_randn(n, d, seed=50) @ _randn(d, d, seed=51)).requires_grad_()
    ft = _randn(n, d, seed=52) + 0.5
    assert gradcheck(lambda x: gaussian_w2(x, ft, diagonal=diagonal), (fs,))


def test_gaussian_w2_gradient_finite_with_dead_dimension() -> None:
    fs = _randn(6, 10, seed=53)
    fs[:, 3] = 0.0  # a dead ReLU unit: zero variance, repeated zero eigenvalues
    fs.requires_grad_()
    ft = _randn(6, 10, seed=54)
    for diagonal in (True, False):
        (grad,) = torch.autograd.grad(gaussian_w2(fs, ft, diagonal=diagonal), fs)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("n", "d", "ridge"), [(10, 4, 0.0), (5, 8, 1e-3)])
def test_gaussian_kl_full_matches_torch_distributions(n: int, d: int, ridge: float) -> None:
    fs, ft = _randn(n, d, seed=55) * 1.3, _randn(n + 2, d, seed=56) + 0.2

    def normal(x: torch.Tensor) -> MultivariateNormal:
        xc = x - x.mean(0)
        cov = xc.T @ xc / x.shape[0] + ridge * torch.eye(d, dtype=F64)
        return MultivariateNormal(x.mean(0), covariance_matrix=cov)

    expected = kl_divergence(normal(fs), normal(ft)).item()
    assert gaussian_kl(fs, ft, diagonal=False, ridge=ridge).item() == pytest.approx(
        expected, rel=1e-9
    )


def test_gaussian_kl_diagonal_matches_torch_distributions() -> None:
    fs, ft, ridge = _randn(9, 5, seed=57), _randn(7, 5, seed=58) * 0.5 + 1.0, 1e-4
    p = Normal(fs.mean(0), (fs.var(0, correction=0) + ridge).sqrt())
    q = Normal(ft.mean(0), (ft.var(0, correction=0) + ridge).sqrt())
    expected = kl_divergence(p, q).sum().item()
    assert gaussian_kl(fs, ft, diagonal=True, ridge=ridge).item() == pytest.approx(
        expected, rel=1e-10
    )
    assert gaussian_kl(ft, ft, diagonal=True, ridge=ridge).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("n", "d", "diagonal"), [(7, 3, False), (4, 6, False), (6, 3, True)])
def test_gaussian_kl_gradcheck(n: int, d: int, diagonal: bool) -> None:
    fs = _randn(n, d, seed=59).requires_grad_()
    ft = _randn(n, d, seed=60) + 0.3
    assert gradcheck(lambda x: gaussian_kl(x, ft, diagonal=diagonal, ridge=0.1), (fs,))


def test_gaussian_kl_singular_without_ridge_is_refused() -> None:
    fs, ft = _randn(4, 6, seed=61), _randn(4, 6, seed=62)
    with pytest.raises(ValueError, match="ridge"):
        gaussian_kl(fs, ft, diagonal=False, ridge=0.0)


# ---------------------------------------------------------------------------
# Projectors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student", "teacher", "layer"),
    [
        ((2, 256, 8, 8), (2, 256, 8, 8), torch.nn.Conv2d),  # resnet8x4 -> resnet32x4
        ((2, 960, 4, 4), (2, 128, 8, 8), torch.nn.ConvTranspose2d),  # ShuffleV1 -> wrn_40_2
        ((2, 16, 8, 8), (2, 8, 4, 4), torch.nn.Conv2d),  # stride-2 3x3
        ((2, 16, 6, 5), (2, 8, 4, 4), torch.nn.Conv2d),  # valid conv, kernel (3, 2)
    ],
)
def test_convreg_output_shapes(student: tuple, teacher: tuple, layer: type) -> None:
    proj = build_projector(student, teacher, kind="convreg")
    assert isinstance(proj, ConvReg) and type(proj.conv) is layer
    out = proj(torch.randn(*student, generator=_gen(70)))
    assert out.shape == teacher
    assert (out >= 0).all()  # BN + ReLU


def test_convreg_published_kernels() -> None:
    assert ConvReg((256, 8, 8), (256, 8, 8)).conv.kernel_size == (1, 1)
    stride2 = ConvReg((1, 16, 8, 8), (1, 8, 4, 4)).conv
    assert stride2.kernel_size == (3, 3) and stride2.stride == (2, 2)
    assert ConvReg((16, 6, 6), (8, 4, 4)).conv.kernel_size == (3, 3)  # 1 + H_s − H_t
    up = ConvReg((960, 4, 4), (128, 8, 8)).conv
    assert up.kernel_size == (4, 4) and up.stride == (2, 2)


@pytest.mark.parametrize(
    ("student", "teacher"), [((2, 12, 7, 7), (2, 10, 7, 7)), ((2, 12, 8, 8), (2, 10, 4, 4))]
)
def test_bottleneck_output_shapes(student: tuple, teacher: tuple) -> None:
    proj = build_projector(student, teacher, kind="bottleneck")
    assert isinstance(proj, Bottleneck) and proj.conv1.out_channels == 256
    assert proj.conv2.kernel_size == (3, 3)
    assert proj(torch.randn(*student, generator=_gen(71))).shape == teacher


@pytest.mark.parametrize(
    ("student", "teacher", "kind"),
    [
        ((2, 8, 4, 4), (2, 8, 6, 6), "convreg"),
        ((2, 8, 6, 4), (2, 8, 4, 6), "convreg"),
        ((2, 8, 6, 6), (2, 8, 4, 4), "bottleneck"),
    ],
)
def test_build_projector_refuses_unfit_shapes(student: tuple, teacher: tuple, kind: str) -> None:
    with pytest.raises(ValueError) as err:
        build_projector(student, teacher, kind=kind)
    assert str(student) in str(err.value) and str(teacher) in str(err.value)


def test_build_projector_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector((1, 4, 4, 4), (1, 4, 4, 4), kind="mlp")
