"""KD²M's published table rows (methods.md §8): Gaussian CW2 and JW2's KL option,
checked against literal formulas (loops, brute-force transport, scipy's sqrtm)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.autograd import gradcheck

from trainables.config import ConfigError, TrialConfig
from trainables.loop import build_criterion
from trainables.losses.math_kd2m import gaussian_cw2, jw2
from trainables.types import EpochInfo, ModelOutputs


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def literal_gaussian_w2(xs: np.ndarray, xt: np.ndarray, diagonal: bool) -> float:
    mu_s, mu_t = xs.mean(0), xt.mean(0)
    mean_term = float(((mu_s - mu_t) ** 2).sum())
    if diagonal:
        sd_s, sd_t = xs.std(0), xt.std(0)  # population (ddof = 0), as published
        return mean_term + float(((sd_s - sd_t) ** 2).sum())
    cov_s = np.cov(xs, rowvar=False, ddof=0).reshape(xs.shape[1], xs.shape[1])
    cov_t = np.cov(xt, rowvar=False, ddof=0).reshape(xt.shape[1], xt.shape[1])
    root_s = scipy.linalg.sqrtm(cov_s).real
    cross = scipy.linalg.sqrtm(root_s @ cov_t @ root_s).real
    return mean_term + float(np.trace(cov_s + cov_t - 2 * cross))


@pytest.mark.parametrize("diagonal", [True, False])
def test_gaussian_cw2_is_the_mean_over_classes_of_the_gaussian_w2(diagonal: bool) -> None:
    n, d = 24, 3
    fs, ft = rand(0, n, d), rand(1, n, d) * 1.5 + 0.3
    labels = torch.tensor([0, 1, 2, 3] * 6)
    labels[-1] = 7  # a class with one sample: zero spread
    classes = sorted(set(labels.tolist()))
    expected = np.mean(
        [
            literal_gaussian_w2(
                fs[labels == c].numpy(), ft[labels == c].numpy(), diagonal or c == 7
            )
            for c in classes
        ]
    )
    got = gaussian_cw2(fs, ft, labels, diagonal).item()
    assert got == pytest.approx(expected, rel=1e-8)


def test_gaussian_cw2_gradients_and_dtype() -> None:
    fs, ft = rand(2, 12, 4).requires_grad_(), rand(3, 12, 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 0])
    for diagonal in (True, False):
        assert gradcheck(lambda x, dg=diagonal: gaussian_cw2(x, ft, labels, dg), (fs,))
    single = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])  # every class one sample
    (g,) = torch.autograd.grad(gaussian_cw2(fs, ft, single, False), fs)
    assert torch.isfinite(g).all()
    assert gaussian_cw2(fs.float(), ft.float(), labels, True).dtype == torch.float32
    with pytest.raises(ValueError, match="paired samples"):
        gaussian_cw2(fs, ft[:5], labels, True)


def literal_jw2_kl(fs, ft, zs, zt, beta: float) -> float:
    """Brute force: with n = m and uniform weights an optimal plan is a permutation / n."""
    n = fs.shape[0]
    feat = np.array([[float(((fs[i] - ft[j]) ** 2).sum()) for j in range(n)] for i in range(n)])
    ps = np.exp(zs) / np.exp(zs).sum(1, keepdims=True)
    pt = np.exp(zt) / np.exp(zt).sum(1, keepdims=True)
    kl = np.array(
        [[float((pt[j] * np.log(pt[j] / ps[i])).sum()) for j in range(n)] for i in range(n)]
    )
    cost = feat / feat.max() + beta * kl
    return min(sum(cost[i, p[i]] for i in range(n)) / n for p in itertools.permutations(range(n)))


def test_jw2_kl_logit_cost_matches_the_literal_formula() -> None:
    n, d, k, beta = 6, 4, 5, 0.7
    fs, ft = rand(4, n, d), rand(5, n, d)
    zs, zt = rand(6, n, k) * 2, rand(7, n, k) * 2
    expected = literal_jw2_kl(fs.numpy(), ft.numpy(), zs.numpy(), zt.numpy(), beta)
    got = jw2(fs, ft, zs, zt, beta, logit_cost="kl").item()
    assert got == pytest.approx(expected, rel=1e-10)
    # the default stays the squared logit distance
    sq = jw2(fs, ft, zs, zt, beta).item()
    assert sq == jw2(fs, ft, zs, zt, beta, logit_cost="sqeuclidean").item() and sq != got
    assert gradcheck(lambda z: jw2(fs, ft, z, zt, beta, logit_cost="kl"), (zs.requires_grad_(),))
    with pytest.raises(ValueError, match="logit_cost 'l1'; allowed: sqeuclidean, kl"):
        jw2(fs, ft, zs, zt, beta, logit_cost="l1")


def test_jw2_kl_is_zero_on_identical_inputs() -> None:
    f, z = rand(8, 5, 3), rand(9, 5, 4)
    assert jw2(f, f, z, z, 1.0, logit_cost="kl").item() == pytest.approx(0.0, abs=1e-12)


def test_kd2m_loss_offers_the_new_rows_through_the_config() -> None:
    B, C, d = 16, 4, 6
    g = torch.Generator().manual_seed(0)
    s = ModelOutputs(torch.randn(B, C, generator=g), (), torch.randn(B, d, generator=g))
    t = ModelOutputs(torch.randn(B, C, generator=g), (), torch.randn(B, d, generator=g))
    y = torch.arange(B) % C
    for settings, expected in (
        ({"distance": "gaussian_cw2"}, gaussian_cw2(s.pooled, t.pooled, y, True)),
        (
            {"distance": "jw2", "logit_cost": "kl", "logit_cost_weight": 0.5},
            jw2(s.pooled, t.pooled, s.logits, t.logits, 0.5, logit_cost="kl"),
        ),
    ):
        cfg = TrialConfig.from_dict({"losses": {"kd2m": {"weight": 1e-4, **settings}}})
        crit = build_criterion(cfg, None)
        crit.setup(s, t, C)
        out = crit(s, t, y, EpochInfo(1, 10))
        assert out.total.item() == pytest.approx(1e-4 * expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^losses\.kd2m\.logit_cost: kd2m\.logit_cost 'l1'"):
        TrialConfig.from_dict({"losses": {"kd2m": {"logit_cost": "l1"}}})
    for key, value in (("ridge", -1.0), ("logit_cost_weight", -0.5), ("ridge", math.nan)):
        with pytest.raises(ConfigError, match=rf"^losses\.kd2m\.{key}: "):
            TrialConfig.from_dict({"losses": {"kd2m": {key: value}}})
