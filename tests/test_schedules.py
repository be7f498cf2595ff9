"""Schedules: boundaries, shapes, and the published schedules as exact members (methods §6)."""

from __future__ import annotations

import math

import pytest

from trainables.schedules import SHAPES, Handoff, Schedule, ramp, warmup
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
    s = Schedule("ramp_down", "cosine", Ed / E, 1.0)
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
        Schedule(kind="ramp_up", shape="quadratic")
    with pytest.raises(ValueError, match="start <= end"):
        Schedule(kind="ramp_up", start=0.8, end=0.2)
    with pytest.raises(ValueError, match="complementary, independent"):
        Handoff(mode="both")
    with pytest.raises(ValueError):
        EpochInfo(1, 0)
