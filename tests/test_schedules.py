"""Schedules: boundaries, shapes, and the published schedules as exact members (methods §6)."""

from __future__ import annotations

import math

import pytest

from trainables.schedules import SHAPES, Handoff, WeightSchedule, crossing, ramp, warmup
from trainables.types import EpochInfo


@pytest.mark.parametrize("shape", SHAPES)
def test_ramp_boundaries_and_monotone(shape: str) -> None:
    a, b = 0.3, 0.7
    assert ramp(0.0, shape, a, b) == 0.0
    assert ramp(a, shape, a, b) == pytest.approx(0.0, abs=1e-12)
    assert ramp(b, shape, a, b) == pytest.approx(1.0, abs=1e-12)
    assert ramp(1.0, shape, a, b) == 1.0
    xs = [a + (b - a) * i / 50 for i in range(51)]
    vals = [ramp(x, shape, a, b) for x in xs]
    assert all(v2 >= v1 - 1e-12 for v1, v2 in zip(vals, vals[1:], strict=False))


def test_ramp_shapes_midpoints() -> None:
    assert ramp(0.5, "linear", 0, 1) == pytest.approx(0.5)
    assert ramp(0.5, "cosine", 0, 1) == pytest.approx(0.5)
    assert ramp(0.25, "cosine", 0, 1) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert ramp(0.49, "step", 0, 1) == 0.0 and ramp(0.5, "step", 0, 1) == 1.0
    k = 3.0
    assert ramp(0.5, "exponential", 0, 1, k) == pytest.approx(math.expm1(k / 2) / math.expm1(k))
    # symmetric sigmoid: value at the centre is exactly 1/2 after rescaling
    assert ramp(0.5, "sigmoid", 0, 1, 7.0) == pytest.approx(0.5)
    # larger sharpness -> steeper around the centre
    assert ramp(0.6, "sigmoid", 0, 1, 20.0) > ramp(0.6, "sigmoid", 0, 1, 2.0)


def test_hard_switch_when_window_is_a_point() -> None:
    assert ramp(0.49, "cosine", 0.5, 0.5) == 0.0
    assert ramp(0.5, "cosine", 0.5, 0.5) == 1.0


def test_published_dkd_warmup_is_a_member() -> None:
    s = warmup(20, 240)
    for e in range(1, 241):
        assert s(EpochInfo(e, 240)) == pytest.approx(min(e / 20, 1.0), abs=1e-12)


def test_published_wkd_decay_is_a_member() -> None:
    g0, Ed, E = 600.0, 150, 240
    s = WeightSchedule("ramp_down", "cosine", Ed / E, 1.0)
    for e in range(1, E + 1):
        ref = g0 if e <= Ed else g0 * 0.5 * (1 + math.cos(math.pi * (e - Ed) / (E - Ed)))
        assert g0 * s(EpochInfo(e, E)) == pytest.approx(ref, rel=1e-12, abs=1e-9)


def test_published_wkl_schedules_are_members() -> None:
    w, kl = Handoff().schedules()  # defaults: the published WKL schedule
    E = 240
    for e in range(1, E + 1):
        info = EpochInfo(e, E)
        assert kl(info) == pytest.approx(math.sin(math.pi * e / (2 * E)) ** 2, abs=1e-12)
        ref_w = 1.0 if e <= 150 else 0.5 * (1 + math.cos(math.pi * (e - 150) / 90))
        assert w(info) == pytest.approx(ref_w, abs=1e-12)
    assert kl(EpochInfo(120, 240)) == pytest.approx(0.5)


def test_complementary_weights_sum_to_one_and_scale_free() -> None:
    h = Handoff(mode="complementary", shape="sigmoid", center=0.5, width=0.4, sharpness=8)
    w, kl = h.schedules()
    assert h.window() == pytest.approx((0.3, 0.7))
    for x in [i / 40 for i in range(41)]:
        assert w.at(x) + kl.at(x) == pytest.approx(1.0)
    # the same fractions give the same weights at 12 and 240 epochs
    assert w(EpochInfo(6, 12)) == pytest.approx(w(EpochInfo(120, 240)))


def test_bad_values_are_rejected_with_allowed_values() -> None:
    with pytest.raises(ValueError, match="allowed"):
        WeightSchedule(kind="ramp_up", shape="quadratic")
    with pytest.raises(ValueError, match="start <= end"):
        WeightSchedule(kind="ramp_up", start=0.8, end=0.2)
    with pytest.raises(ValueError, match="complementary, independent"):
        Handoff(mode="both")
    with pytest.raises(ValueError):
        EpochInfo(1, 0)


# -- issue 8: complementary hand-offs cross exactly at their centre ----------------------
def _wkl_complementary_ranges() -> tuple[tuple[float, float], tuple[float, float], tuple]:
    """The complementary hand-off ranges searched by search_spaces/wkl_schedule.yaml."""
    from pathlib import Path

    from study.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "wkl_schedule.yaml")
    center, width, shape = (spec.param(f"handoff.{k}") for k in ("center", "width", "shape"))
    return (center.low, center.high), (width.low, width.high), shape.values


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


SHARPNESS = (0.25, 1.0, 4.0, 10.0, 30.0, 100.0, 700.0)


def test_complementary_crossing_is_the_center_over_the_searched_range() -> None:
    (c_lo, c_hi), (w_lo, w_hi), shapes = _wkl_complementary_ranges()
    assert set(shapes) == set(SHAPES)
    for shape in shapes:
        ks = SHARPNESS if shape in ("sigmoid", "exponential") else (10.0,)
        for k in ks:
            for c in _grid(c_lo, c_hi, 13):
                for width in _grid(w_lo, w_hi, 10):
                    h = Handoff(
                        mode="complementary", shape=shape, center=c, width=width, sharpness=k
                    )
                    w, kl = h.schedules()
                    where = f"{shape} k={k} center={c} width={width}"
                    if shape == "step":  # the switch happens at the centre
                        assert kl.at(c) == 1.0 and w.at(c) == 0.0, where
                        assert kl.at(c - 1e-12) == 0.0 and w.at(c - 1e-12) == 1.0, where
                        continue
                    assert kl.at(c) == pytest.approx(0.5, abs=1e-9), where
                    assert w.at(c) == pytest.approx(0.5, abs=1e-9), where
                    # a crossing, not a touch: KL below W before the centre, above after
                    d = min(width, 1.0) * 1e-3
                    assert kl.at(c - d) < 0.5 < kl.at(c + d), where
                    for x in _grid(0.0, 1.0, 21):
                        assert w.at(x) + kl.at(x) == pytest.approx(1.0, abs=1e-12), where


def test_complementary_windows_are_not_clipped() -> None:
    """The tracker's examples: clipping moved the crossing to 0.35 and 0.70."""
    for c, width in ((0.2, 1.0), (0.8, 0.8)):
        h = Handoff(mode="complementary", shape="cosine", center=c, width=width)
        assert h.window() == pytest.approx((c - width / 2, c + width / 2))
        assert h.schedules()[1].at(c) == pytest.approx(0.5, abs=1e-12)
    # linear, centre 0.2, width 1: r = x + 0.3 inside training (the window is [-0.3, 0.7])
    _, kl = Handoff(mode="complementary", shape="linear", center=0.2, width=1.0).schedules()
    assert kl.at(0.0) == pytest.approx(0.3) and kl.at(0.7) == pytest.approx(1.0)


def test_exponential_window_is_placed_analytically() -> None:
    for k in SHARPNESS:
        t = crossing("exponential", k)
        assert math.expm1(k * t) / math.expm1(k) == pytest.approx(0.5, rel=1e-12)
        h = Handoff(mode="complementary", shape="exponential", center=0.5, width=0.4, sharpness=k)
        lo, hi = h.window()
        assert hi - lo == pytest.approx(0.4) and lo == pytest.approx(0.5 - t * 0.4)
    assert crossing("exponential", 1e-15) == 0.5
    assert all(crossing(s) == 0.5 for s in ("linear", "cosine", "sigmoid", "step"))


def test_handoff_refuses_center_outside_training_and_bad_width() -> None:
    for kwargs, match in (
        ({"center": 5.0}, r"^handoff center must be in \[0, 1\].*got 5\.0$"),
        ({"center": -0.1}, r"^handoff center must be in \[0, 1\]"),
        ({"width": 0.0}, r"^handoff width must be > 0.*got 0\.0$"),
        ({"width": -1.0}, r"^handoff width must be > 0"),
        ({"width": float("nan")}, r"^handoff width must be a finite number"),
        ({"center": float("nan")}, r"^handoff center must be a finite number"),
    ):
        with pytest.raises(ValueError, match=match) as exc:
            Handoff(mode="complementary", **kwargs)
        assert "\n" not in str(exc.value)
    from trainables.config import ConfigError, TrialConfig

    raw = {
        "losses": {"ce": {}, "wkd_l": {}, "kl": {"loss": "dkd"}},
        "handoff": {"mode": "complementary", "center": 5.0},
    }
    with pytest.raises(ConfigError, match=r"^handoff\.center: handoff center must be in \[0, 1\]"):
        TrialConfig.from_dict(raw)
    raw["handoff"] = {"mode": "complementary", "center": 0.5, "width": 0}
    with pytest.raises(ConfigError, match=r"^handoff\.width: handoff width must be > 0"):
        TrialConfig.from_dict(raw)


def test_user_schedule_windows_stay_within_training() -> None:
    from trainables.config import ConfigError, TrialConfig

    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        WeightSchedule(kind="ramp_up", start=-0.2, end=0.5)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        WeightSchedule(kind="ramp_up", start=0.5, end=1.2)
    for key, value in (("start", -0.2), ("end", 1.5)):
        raw = {"losses": {"kd": {"weight_schedule": {"kind": "ramp_up", key: value}}}}
        with pytest.raises(ConfigError, match=r"^losses\.kd\.weight_schedule"):
            TrialConfig.from_dict(raw)
    raw = {"losses": {"kd": {"weight_schedule": {"kind": "ramp_up", "bounded": False}}}}
    with pytest.raises(ConfigError, match=r"weight_schedule\.bounded: unknown key"):
        TrialConfig.from_dict(raw)
    # independent hand-off windows are user-written: strict as well
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        Handoff(mode="independent", w_start=-0.1)


def test_exact_fraction_warmup_is_the_published_member() -> None:
    from trainables.config import TrialConfig

    raw = {
        "losses": {
            "dkd": {"weight_schedule": {"kind": "ramp_up", "shape": "linear", "end": "20/240"}},
        }
    }
    s = TrialConfig.from_dict(raw).losses["dkd"].weight_schedule
    assert s.end == 20 / 240 and s == warmup(20, 240)
    for e in range(1, 241):  # to rounding (the 6-digit 0.083333 was off by 4e-6)
        assert s(EpochInfo(e, 240)) == pytest.approx(min(e / 20, 1.0), rel=1e-14, abs=0)
    assert s(EpochInfo(20, 240)) == 1.0 and s(EpochInfo(19, 240)) < 1.0
    rounded = WeightSchedule("ramp_up", "linear", 0.0, 0.083333)
    assert abs(rounded(EpochInfo(19, 240)) - 0.95) > 1e-6
