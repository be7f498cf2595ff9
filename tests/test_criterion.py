"""Criterion: weights from pure schedules, unscheduled parts, state round trips."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.config import ConfigError, TrialConfig
from trainables.loop import build_criterion
from trainables.types import EpochInfo, ModelOutputs

C = 10


def outputs(seed: int, B: int = 16, feat: tuple[int, int, int] = (8, 4, 4)) -> ModelOutputs:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g) * 3
    f = torch.randn(B, *feat, generator=g)
    return ModelOutputs(logits, (f,), f.mean((2, 3)))


def cost() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    d = torch.rand(C, C, generator=g)
    d = (d + d.T) / 2
    d.fill_diagonal_(0)
    return d


WKL = {
    "epochs": 240,
    "losses": {
        "ce": {},
        "wkd_l": {"temperature": 8, "wd_weight": 600},
        "kl": {"loss": "dkd", "weight": 0.5, "temperature": 8, "nckd_weight": 2},
    },
    "handoff": {"mode": "independent"},
}


def test_wkl_weights_follow_the_published_schedule() -> None:
    cfg = TrialConfig.from_dict(WKL)
    crit = build_criterion(cfg, cost())
    s, t = outputs(0), outputs(1)
    y = torch.arange(16) % C
    crit.setup(s, t, C)
    for e in (1, 120, 150, 200, 240):
        out = crit(s, t, y, EpochInfo(e, 240))
        kl = 0.5 * math.sin(math.pi * e / 480) ** 2
        w = 1.0 if e <= 150 else 0.5 * (1 + math.cos(math.pi * (e - 150) / 90))
        assert out.weights["kl"] == pytest.approx(kl)
        assert out.weights["wkd_l"] == pytest.approx(w)
        raw = crit.losses["wkd_l"](s, t, y)
        # L_t is never decayed; WD carries γ0 · schedule
        assert out.parts["wkd_l/target"] == pytest.approx(raw["target"].item(), rel=1e-6)
        assert out.parts["wkd_l/wasserstein"].item() == pytest.approx(
            600 * w * raw["wasserstein"].item(), rel=1e-5
        )
        total = sum(v for v in out.parts.values())
        assert out.total.item() == pytest.approx(total.item(), rel=1e-6)
    assert "wkd_l/marginal_error" in out.diagnostics
    assert "wkd_l/target" not in out.diagnostics


def test_describe_is_a_readable_formula() -> None:
    crit = build_criterion(TrialConfig.from_dict(WKL), cost())
    text = crit.describe()
    assert text.startswith("1*ce(")
    assert "ramp_down[cosine](0.625->1)*wkd_l(" in text
    assert "0.5*ramp_up[cosine](0->1)*dkd(" in text


def test_gkl_prior_and_projector_round_trip_through_state_dict() -> None:
    cfg = TrialConfig.from_dict(
        {
            "epochs": 10,
            "losses": {"gkl": {"class_prior": True}, "wkd_f": {}},
        }
    )
    s, t = outputs(0), outputs(1, feat=(16, 4, 4))
    y = torch.arange(16) % C
    torch.manual_seed(0)
    a = build_criterion(cfg, None)
    a.setup(s, t, C)
    a.on_epoch_start(EpochInfo(1, 10))
    a.on_batch_end(s, t, y)
    a.on_epoch_end(EpochInfo(1, 10))
    prior = a.losses["gkl"].prior
    # row c = class-mean teacher probabilities at T2 = 4
    p = torch.softmax(t.logits / 4, 1)
    assert torch.allclose(prior[3], p[y == 3].mean(0), atol=1e-6)
    assert bool(a.losses["gkl"].prior_ready)
    torch.manual_seed(123)  # a different projector init
    b = build_criterion(cfg, None)
    b.setup(s, t, C)
    out_a = a(s, t, y, EpochInfo(2, 10))
    assert not torch.allclose(
        a(s, t, y, EpochInfo(2, 10)).total, b(s, t, y, EpochInfo(2, 10)).total
    )
    b.load_state_dict(a.state_dict())
    out_b = b(s, t, y, EpochInfo(2, 10))
    for k in out_a.parts:
        assert torch.allclose(out_a.parts[k], out_b.parts[k]), k
    keys = set(a.state_dict())
    assert {"losses.gkl.prior", "losses.gkl.prior_ready"} <= keys
    assert any(k.startswith("losses.wkd_f.projector.") for k in keys)


def test_trial_config_round_trip_and_errors() -> None:
    cfg = TrialConfig.from_dict(WKL)
    again = TrialConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    with pytest.raises(
        ConfigError, match=r"losses\.wkd_l\.solver: wkd_l.solver 'fast' is not allowed; allowed"
    ):
        TrialConfig.from_dict({"losses": {"wkd_l": {"solver": "fast"}}})
    with pytest.raises(ConfigError, match=r"handoff\.kl_term: 'kl' is not a loss term"):
        TrialConfig.from_dict({"losses": {"ce": {}, "wkd_l": {}}, "handoff": {}})
    with pytest.raises(ConfigError, match=r"^losses: at least one loss term"):
        TrialConfig.from_dict({"losses": {}})


# -- validation at the source: one line naming the key path, the value, what is allowed --
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"losses": {"kd": {"temperature": 0}}},
            r"^losses\.kd\.temperature: 0\.0 is not allowed; allowed: a temperature > 0$",
        ),
        (
            {"losses": {"kd": {"temperature": -4}}},
            r"^losses\.kd\.temperature: -4\.0 is not allowed",
        ),
        ({"losses": {"wkd_l": {"temperature": 0}}}, r"^losses\.wkd_l\.temperature: .*(> 0|0\.0)"),
        (
            {"losses": {"kl": {"loss": "dkd", "temperature": 0}}},
            r"^losses\.kl\.temperature: dkd\.temperature must be > 0, got 0\.0$",
        ),
        (
            {"losses": {"dkd": {"nckd_weight": -1}}},
            r"^losses\.dkd\.nckd_weight: dkd\.nckd_weight must be >= 0, got -1\.0$",
        ),
        (
            {"losses": {"gkl": {"pair_weight_exponent": -0.1}}},
            r"^losses\.gkl\.pair_weight_exponent: gkl\.pair_weight_exponent must be >= 0, got -0\.1$",
        ),
        (
            {"losses": {"gkl": {"prior_temperature": 0}}},
            r"^losses\.gkl\.prior_temperature: gkl\.prior_temperature must be > 0",
        ),
        (
            {"losses": {"gkl": {"wmse_weight": -16}}},
            r"^losses\.gkl\.wmse_weight: gkl\.wmse_weight must be >= 0",
        ),
        (
            {"losses": {"kd": {"weight": -0.9}}},
            r"^losses\.kd\.weight: -0\.9 is not allowed; allowed: a finite number >= 0$",
        ),
        ({"losses": {"kd": {"weight": NAN}}}, r"^losses\.kd\.weight: nan is not allowed"),
        (
            {"losses": {"kd": {}}, "optim": {"momentum": 1.0}},
            r"^optim\.momentum: momentum must be in \[0, 1\), got 1\.0$",
        ),
        (
            {"losses": {"kd": {}}, "optim": {"momentum": -0.1}},
            r"^optim\.momentum: momentum must be in \[0, 1\)",
        ),
        (
            {"losses": {"kd": {}}, "optim": {"weight_decay": -5e-4}},
            r"^optim\.weight_decay: weight_decay must be >= 0, got -0\.0005$",
        ),
        ({"losses": {"kd": {}}, "optim": {"lr": 0}}, r"^optim\.lr: lr must be > 0, got 0\.0$"),
        ({"losses": {"kd": {}}, "optim": {"lr": -0.1}}, r"^optim\.lr: lr must be > 0"),
        (
            {"losses": {"kd": {}}, "optim": {"lr": NAN}},
            r"^optim\.lr: expected a finite number, got nan$",
        ),
        (
            {"losses": {"kd": {}}, "optim": {"lr": INF}},
            r"^optim\.lr: expected a finite number, got inf$",
        ),
        (
            {"losses": {"kd": {}}, "optim": {"milestones": [0.5, NAN]}},
            r"^optim\.milestones\[1\]: expected a finite number",
        ),
        (
            {"losses": {"kd": {}}, "data": {"val_fraction": NAN}},
            r"^data\.val_fraction: expected a finite number",
        ),
        (
            {"losses": {"kd": {"temperature": NAN}}},
            r"^losses\.kd\.temperature: expected a finite number",
        ),
        (
            {"losses": {"kd": {"weight_schedule": {"kind": "ramp_up", "end": NAN}}}},
            r"^losses\.kd\.weight_schedule\.end: expected a finite",
        ),
        (
            {"losses": {"ce": {}, "wkd_l": {}, "kl": {"loss": "kd"}}, "handoff": {"center": NAN}},
            r"^handoff\.center: expected a finite",
        ),
        (
            {"losses": {"kd": {}}, "optim": {"momentum": 0.0, "nesterov": True}},
            r"nesterov needs momentum > 0",
        ),
    ],
)
def test_bad_numbers_are_refused_with_one_line(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as exc:
        TrialConfig.from_dict(raw)
    assert "\n" not in str(exc.value)


def test_params_refuse_bad_values_when_built_directly() -> None:
    from trainables.losses.dkd import DKDParams
    from trainables.losses.gkl import GKLParams
    from trainables.losses.kd2m import KD2MParams

    for cls, kwargs in (
        (DKDParams, {"temperature": 0.0}),
        (DKDParams, {"tckd_weight": -1.0}),
        (DKDParams, {"nckd_weight": NAN}),
        (GKLParams, {"pair_weight_exponent": -0.5}),
        (GKLParams, {"temperature": -1.0}),
        (GKLParams, {"soft_ce_weight": INF}),
        (KD2MParams, {"ridge": -1e-4}),
        (KD2MParams, {"logit_cost_weight": NAN}),
    ):
        with pytest.raises(ValueError, match=rf"\.{next(iter(kwargs))} must be"):
            cls(**kwargs)
    GKLParams(pair_weight_exponent=0.0)  # γ = 0 is published (RN32x4 -> SNV1)
