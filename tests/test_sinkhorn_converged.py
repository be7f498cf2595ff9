"""The converged WKD-L solver (trainables.losses.sinkhorn): accuracy against POT at the
smallest λ the shipped spaces search, its cap (max_sweeps / min_sweeps), its per-batch
diagnostics and the epoch health check built on them.

Tolerances are derived, not tuned: a plan whose teacher marginal is off by τ (L1) is the
exact entropic plan of a marginal off by τ, so its transport cost is off by at most
½·osc(∂WD/∂q)·τ, and the oscillation of that gradient (a dual potential as λ → 0) is
bounded by the cost range; measured 0.43-0.54 for costs up to 0.59 (C = 5-1000,
λ = 0.005-0.03). The bounds below use osc <= 2·max(C), a factor ~2 of margin.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tnf

from trainables.losses import functional as F
from trainables.losses import sinkhorn as SK
from trainables.losses.wkd import WKDLLoss, WKDLParams, min_sweeps
from trainables.types import ModelOutputs

ot = pytest.importorskip("ot")

DEFAULT = WKDLParams(solver="converged", sinkhorn_reg=0.005)


def _cka_like_cost(C: int, seed: int = 1) -> torch.Tensor:
    """Symmetric D, zero diagonal, 0.48-0.88 off-diagonal (methods §5), sharpened κ = 1."""
    g = torch.Generator().manual_seed(seed)
    D = 0.48 + 0.4 * torch.rand(C, C, generator=g, dtype=torch.float64)
    D = (D + D.T) / 2
    D.fill_diagonal_(0.0)
    return F.sharpen_cost(D, 1.0)


def _logits(B: int, C: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits ~ 4·N(0, 1), student = teacher + 2·N(0, 1) (the bench's inputs)."""
    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(B, C, generator=g, dtype=torch.float64) * 4
    zs = zt + torch.randn(B, C, generator=g, dtype=torch.float64) * 2
    return zs, zt, torch.randint(0, C, (B,), generator=g)


def _dropped(
    z: torch.Tensor, y: torch.Tensor, b: int, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample b's non-target distribution (length C − 1, literal drop) and kept indices."""
    keep = torch.arange(z.shape[1]) != y[b]
    return torch.softmax(z[b, keep] / T, 0), keep


def _floored(cost: torch.Tensor) -> torch.Tensor:
    return torch.relu(cost) + 1e-8  # the published floor, applied by wkd_logit


# ------------------------------------------------------------------ accuracy vs POT


def test_converged_matches_pot_cold_at_reg_0005_c100() -> None:
    # one sample, POT's log-domain Sinkhorn from scratch (~10⁴ iterations, a few s)
    C, T, reg = 100, 8.0, 0.005
    zs, zt, y = _logits(1, C, seed=3)
    cost = _cka_like_cost(C)
    out = F.wkd_logit(
        zs, zt, y, cost, T, reg, DEFAULT.sinkhorn_iters, "converged",
        tol=DEFAULT.tol, max_sweeps=DEFAULT.max_sweeps,
    )  # fmt: skip
    assert float(out.cap_hit) == 0.0
    assert float(out.max_error) < DEFAULT.tol
    p, keep = _dropped(zs, y, 0, T)
    q, _ = _dropped(zt, y, 0, T)
    M = _floored(cost)[keep][:, keep]
    pot_tol = 1e-6  # POT stops on the L2 norm of its marginal error: L1 <= sqrt(C−1)·L2
    ref = ot.sinkhorn2(
        p.numpy(), q.numpy(), M.numpy(), reg, method="sinkhorn_log",
        numItermax=300_000, stopThr=pot_tol, warn=False,
    )  # fmt: skip
    bound = float(M.max()) * (DEFAULT.tol + math.sqrt(C - 1) * pot_tol)
    assert abs(float(out.wasserstein) - float(ref)) <= bound


@pytest.mark.parametrize(("C", "B"), [(100, 8), (1000, 2)])
def test_converged_plan_is_a_pot_fixed_point_at_reg_0005(C: int, B: int) -> None:
    # POT's log-domain Sinkhorn, warm-started from our scalings (its log u, log v are
    # ours: log Π = −M/λ + log u + log v), must find both marginals within its
    # threshold after its first sweep and return the same transport cost. This checks
    # the plan itself (Gibbs form + marginals) independently at any C; a cold POT run at
    # C = 1000 and λ = 0.005 would take minutes.
    T, reg = 8.0, 0.005
    zs, zt, y = _logits(B, C, seed=4)
    cost = _cka_like_cost(C, seed=2)
    mask = tnf.one_hot(y, C).bool()
    ps = torch.softmax((zs / T).masked_fill(mask, -torch.inf), 1)
    pt = torch.softmax((zt / T).masked_fill(mask, -torch.inf), 1)
    cf = _floored(cost)
    res = F.entropic_ot(ps, pt, cf, reg, DEFAULT.max_sweeps, DEFAULT.tol)
    assert float(res.marginal_error.max()) < DEFAULT.tol
    assert res.iterations < DEFAULT.max_sweeps
    u, v, *_ = SK._converged_solve(ps, pt, cf, reg, DEFAULT.tol, DEFAULT.max_sweeps)
    for b in range(B):
        keep = ~mask[b]
        M = cf[keep][:, keep]
        warm = (torch.log(u[b, keep]).numpy(), torch.log(v[b, keep]).numpy())
        val, log = ot.sinkhorn2(
            ps[b, keep].numpy(), pt[b, keep].numpy(), M.numpy(), reg,
            method="sinkhorn_log", numItermax=1, stopThr=DEFAULT.tol, warmstart=warm,
            log=True, warn=False,
        )  # fmt: skip
        assert log["niter"] == 0  # converged by POT's own test after one sweep
        # both plans have marginal errors <= tol (L1; POT's L2 <= L1)
        bound = float(M.max()) * 2 * DEFAULT.tol
        assert abs(float(val) - float(res.cost[b])) <= bound


def test_converged_gradient_finite_when_student_equals_teacher() -> None:
    # p̃_s = p̃_t at small λ: the plan is diagonal up to e^(−C/λ) ~ 1e-35 and the
    # implicit-function system is singular to rounding; the gradient must stay finite
    # (it is ~0: p = q minimises the transport cost)
    C = 20
    _, zt, y = _logits(2, C, seed=5)
    cost = _cka_like_cost(C)
    for reg in (0.02, 0.01, 0.005):
        zs = zt.clone().requires_grad_()
        out = F.wkd_logit(zs, zt, y, cost, 8.0, reg, 10, "converged", max_sweeps=10_000)
        out.wasserstein.backward()
        assert torch.isfinite(zs.grad).all()
        assert float(zs.grad.abs().max()) < 1e-2


@pytest.mark.parametrize("debiased", [False, True])
def test_float32_logits_get_the_float64_gradient(debiased: bool) -> None:
    # training feeds float32 logits: the float64 solve must stay on the autograd graph
    C = 30
    zs, zt, y = _logits(6, C, seed=9)
    cost = _cka_like_cost(C)
    grads = []
    for dtype in (torch.float32, torch.float64):
        z = zs.to(dtype).requires_grad_()
        out = F.wkd_logit(
            z, zt.to(dtype), y, cost.to(dtype), 8.0, 0.01, 10, "converged",
            max_sweeps=DEFAULT.max_sweeps, debiased=debiased,
        )  # fmt: skip
        assert out.wasserstein.dtype == dtype and out.wasserstein.requires_grad
        out.wasserstein.backward()
        grads.append(z.grad.double())
    # the inputs differ by float32 rounding (~6e-8 relative), nothing else
    scale = float(grads[1].abs().max())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("reg", [0.005, 0.05])
def test_gradient_accuracy_at_the_default_tol(reg: float) -> None:
    # the implicit gradient is exact for the returned plan, whose teacher marginal is
    # off by tol; against a 1e-12 solve it moved by <= 5e-7 relative at tol = 1e-6
    # (C = 100 and 1000, B = 16); the stated guarantee here is 100·tol
    C = 100
    zs0, zt, y = _logits(8, C, seed=10)
    cost = _cka_like_cost(C)
    grads = []
    for tol in (DEFAULT.tol, 1e-12):
        zs = zs0.clone().requires_grad_()
        out = F.wkd_logit(
            zs, zt, y, cost, 8.0, reg, 10, "converged", tol=tol, max_sweeps=DEFAULT.max_sweeps
        )
        assert float(out.cap_hit) == 0.0
        out.wasserstein.backward()
        grads.append(zs.grad)
    rel = float((grads[0] - grads[1]).norm() / grads[1].norm())
    assert rel <= 100 * DEFAULT.tol


# ------------------------------------------------------------------ cap and min_sweeps


def test_default_cap_covers_the_searched_range() -> None:
    assert DEFAULT.max_sweeps >= min_sweeps(0.005)
    regs = [0.002, 0.005, 0.007, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0]
    need = [min_sweeps(r) for r in regs]
    assert need == sorted(need, reverse=True)  # smaller λ never needs fewer sweeps
    assert all(n >= 1 for n in need)


def test_min_sweeps_refuses_a_small_cap() -> None:
    need = min_sweeps(0.005)
    with pytest.raises(ValueError, match=rf"wkd_l\.max_sweeps {need - 1} .*>= {need}"):
        WKDLParams(solver="converged", sinkhorn_reg=0.005, max_sweeps=need - 1)
    WKDLParams(solver="converged", sinkhorn_reg=0.005, max_sweeps=need)
    # the published sinkhorn_iters = 10 is the reference solver's count, not the cap
    WKDLParams(solver="converged", sinkhorn_reg=0.005, sinkhorn_iters=10)
    # the reference solver does not use the cap
    WKDLParams(solver="reference", max_sweeps=1)


def test_trial_config_refuses_a_small_cap_by_path() -> None:
    from trainables.config import ConfigError, TrialConfig

    spec = {"solver": "converged", "sinkhorn_reg": 0.005, "max_sweeps": 50}
    with pytest.raises(ConfigError, match="max_sweeps"):
        TrialConfig.from_dict({"losses": {"ce": {}, "wkd_l": spec}})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sinkhorn_iters", 0),
        ("max_sweeps", 0),
        ("tol", 0.0),
        ("tol", float("nan")),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("temperature", float("nan")),
        ("wd_weight", -1.0),
        ("wd_weight", float("nan")),
        ("cost_sharpen", -0.5),
        ("sinkhorn_reg", float("nan")),
    ],
)
def test_params_refuse_invalid_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^wkd_l\.{field} must be .*, got {value}$"):
        WKDLParams(**{field: value})


# ------------------------------------------------------------------ diagnostics


def test_cap_hit_is_reported() -> None:
    C = 50
    zs, zt, y = _logits(4, C, seed=6)
    cost = _cka_like_cost(C)
    # a cap far below min_sweeps, through the functional API (WKDLParams refuses it)
    low = F.wkd_logit(zs, zt, y, cost, 8.0, 0.005, 10, "converged", max_sweeps=3)
    assert float(low.cap_hit) == 1.0
    assert float(low.max_error) >= 1e-6
    assert 3 <= float(low.sweeps) < 3 + 50  # the cap, overrun by at most one last step
    ok = F.wkd_logit(zs, zt, y, cost, 8.0, 0.005, 10, "converged", max_sweeps=DEFAULT.max_sweeps)
    assert float(ok.cap_hit) == 0.0
    assert float(ok.max_error) < 1e-6
    assert 1 <= float(ok.sweeps) < min_sweeps(0.005)
    ref = F.wkd_logit(zs, zt, y, cost, 8.0, 0.05, 10, "reference")
    assert float(ref.sweeps) == 10.0
    assert float(ref.cap_hit) == 0.0


def test_debiased_reports_all_three_solves() -> None:
    C = 30
    zs, zt, y = _logits(3, C, seed=7)
    cost = _cka_like_cost(C)
    one = F.wkd_logit(zs, zt, y, cost, 8.0, 0.01, 10, "converged", max_sweeps=5000)
    three = F.wkd_logit(zs, zt, y, cost, 8.0, 0.01, 10, "converged", max_sweeps=5000, debiased=True)
    assert float(three.sweeps) > float(one.sweeps)
    assert float(three.cap_hit) == 0.0
    assert float(three.max_error) < 1e-6


def _outputs(zs: torch.Tensor) -> ModelOutputs:
    return ModelOutputs(zs.float(), (), zs.float())


@pytest.mark.parametrize("solver", ["reference", "converged"])
def test_loss_returns_solver_diagnostics(solver: str) -> None:
    C = 20
    zs, zt, y = _logits(8, C, seed=8)
    loss = WKDLLoss(WKDLParams(solver=solver, sinkhorn_reg=0.05))
    loss.set_cost(_cka_like_cost(C).float())
    out = loss(_outputs(zs), _outputs(zt), y)
    assert {"sweeps", "cap_hit", "marginal_error"} <= set(out)
    assert {"sweeps", "cap_hit"} <= loss.diagnostic_keys
    assert float(out["cap_hit"]) == 0.0
    if solver == "reference":
        assert float(out["sweeps"]) == 10.0
    else:
        assert 1 <= float(out["sweeps"]) < min_sweeps(0.05)
        assert float(out["marginal_error"]) < 1e-6


# ------------------------------------------------------------------ epoch health


@pytest.mark.parametrize("on_collapse", ["fail", "warn"])
def test_epoch_health_flags_a_cap_hit(on_collapse: str) -> None:
    p = WKDLParams(solver="converged", sinkhorn_reg=0.01, on_collapse=on_collapse)
    loss = WKDLLoss(p)
    diag = {
        "marginal_error": 3e-4,
        "marginal_gap": 0.5,
        "collapsed": 0.0,
        "sweeps": float(p.max_sweeps),
        "cap_hit": 0.25,
    }
    issue = loss.epoch_health(diag, 7)
    assert issue is not None
    assert issue.fatal is (on_collapse == "fail")
    for part in ("epoch 7", "25.0%", "0.0003", "sinkhorn_reg=0.01", f"max_sweeps={p.max_sweeps}"):
        assert part in issue.message
    assert "raise max_sweeps or sinkhorn_reg" in issue.message
    assert "\n" not in issue.message


def test_epoch_health_none_when_converged() -> None:
    loss = WKDLLoss(WKDLParams(solver="converged", sinkhorn_reg=0.01, on_collapse="fail"))
    diag = {"marginal_error": 1e-7, "marginal_gap": 0.5, "collapsed": 0.0, "cap_hit": 0.0}
    assert loss.epoch_health(diag, 3) is None
    # a converged solve is never judged by the reference solver's collapse rule
    assert loss.epoch_health({**diag, "collapsed": 1.0}, 3) is None


def test_epoch_health_reference_collapse_unchanged() -> None:
    loss = WKDLLoss(WKDLParams(solver="reference", sinkhorn_reg=0.02, on_collapse="fail"))
    diag = {"marginal_error": 0.4, "marginal_gap": 0.45, "collapsed": 1.0, "cap_hit": 0.0}
    issue = loss.epoch_health(diag, 2)
    assert issue is not None and issue.fatal
    assert "use solver: converged" in issue.message
