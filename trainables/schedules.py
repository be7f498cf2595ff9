"""Pure weight schedules of the epoch (methods.md §6).

Every position is a *fraction of the planned epochs* ``x = e / E`` so that one
configuration serves 12 or 240 epochs, and a trial stopped early by a scheduler
sees exactly the schedule of a full one. A schedule holds no state: resuming from
a checkpoint needs nothing but the epoch.

The family (methods.md §6):

- a ramp ``r(x; shape, a, b)`` rises from 0 at ``x <= a`` to 1 at ``x >= b`` with
  ``t = clip((x - a) / (b - a), 0, 1)``: ``linear`` t, ``cosine`` ½(1 − cos πt),
  ``sigmoid`` (sharpness k, rescaled to be exactly 0 at a and 1 at b), ``step``
  1[t ≥ ½], ``exponential`` (e^{kt} − 1)/(e^k − 1);
- ``ramp_up``: r(x); ``ramp_down``: 1 − r(x); ``constant``: 1.

Published schedules as exact members (checked in tests/test_schedules.py):

- DKD / GKL warm-up ``min(e/20, 1)`` over 240 epochs = ramp_up linear on [0, 20/240];
- WKD-L's ``γ0`` until E_d = 150 then cosine to 0 = ramp_down cosine on [150/240, 1];
- WKL's KL ramp ``sin²(π e / 2E)`` = ramp_up cosine on [0, 1].

Positions may be written as exact fractions of a recipe's epochs in YAML (``"20/240"``,
parsed by ``trainables.config``); fields that accept them carry ``metadata={"fraction":
True}``.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, field
from typing import Any

from trainables.types import EpochInfo

SHAPES: tuple[str, ...] = ("linear", "cosine", "sigmoid", "step", "exponential")
KINDS: tuple[str, ...] = ("constant", "ramp_up", "ramp_down")

#: field metadata of an epoch position: YAML may give it as an exact fraction "20/240"
FRACTION = {"fraction": True}


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def crossing(shape: str, sharpness: float = 10.0) -> float:
    """Where on its window (t in [0, 1]) the ramp ``r`` of ``shape`` reaches ½.

    ½ for the symmetric shapes (linear, cosine, sigmoid, step); for ``exponential``
    the root of ``(e^{kt} − 1)/(e^k − 1) = ½``: ``t* = ln((e^k + 1)/2) / k`` (→ ½ as
    k → 0), computed without overflow for large k.
    """
    if shape != "exponential":
        return 0.5
    k = sharpness
    if abs(k) < 1e-12:
        return 0.5
    if k > 0:  # ln((e^k + 1)/2) = k + ln((1 + e^-k)/2)
        return (k + math.log1p(math.exp(-k)) - math.log(2.0)) / k
    return math.log1p(math.expm1(k) / 2.0) / k


def ramp(x: float, shape: str, start: float, end: float, sharpness: float = 10.0) -> float:
    """r(x; shape, a, b) of methods.md §6: 0 for x <= start, 1 for x >= end.

    ``sharpness`` is the k of the sigmoid and exponential shapes (ignored by the
    others). ``start == end`` is a hard switch at that point (a step).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown ramp shape {shape!r}; allowed: {', '.join(SHAPES)}")
    if end < start:
        raise ValueError(f"ramp window end {end} is before its start {start}")
    if end == start:
        return 1.0 if x >= end else 0.0
    t = min(max((x - start) / (end - start), 0.0), 1.0)
    if shape == "linear":
        return t
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    if shape == "step":
        return 1.0 if t >= 0.5 else 0.0
    if shape == "exponential":
        k = sharpness
        if abs(k) < 1e-12:  # the limit k -> 0 is linear
            return t
        return math.expm1(k * t) / math.expm1(k)
    # sigmoid centred on the window, rescaled so that r(a) = 0 and r(b) = 1 exactly
    k = sharpness

    def sig(u: float) -> float:  # the logistic 1/(1 + e^{-k(u-½)}), overflow-free
        return 0.5 * (1.0 + math.tanh(0.5 * k * (u - 0.5)))

    lo, hi = sig(0.0), sig(1.0)
    return (sig(t) - lo) / (hi - lo)


@dataclass(frozen=True)
class WeightSchedule:
    """A weight multiplier as a pure function of the epoch.

    ``kind``: ``constant`` (1), ``ramp_up`` (r), ``ramp_down`` (1 − r).
    ``start``/``end`` are fractions of the planned epochs, in [0, 1] for a schedule
    written by a user. ``bounded=False`` (not a field, not settable from YAML) lets a
    :class:`Handoff` place its complementary window beyond [0, 1] so that the weights
    cross exactly at its centre; the ramp clips t, so only the part inside training acts.
    """

    kind: str = "constant"
    shape: str = "cosine"
    start: float = field(default=0.0, metadata=FRACTION)
    end: float = field(default=1.0, metadata=FRACTION)
    sharpness: float = 10.0
    bounded: InitVar[bool] = True

    def __post_init__(self, bounded: bool) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"weight schedule kind {self.kind!r} is not allowed; allowed: {KINDS}")
        if self.shape not in SHAPES:
            raise ValueError(
                f"weight schedule shape {self.shape!r} is not allowed; allowed: {SHAPES}"
            )
        for name in ("start", "end", "sharpness"):
            _finite(f"weight schedule {name}", getattr(self, name))
        if bounded and not (0.0 <= self.start <= self.end <= 1.0):
            raise ValueError(
                f"weight schedule window must satisfy 0 <= start <= end <= 1 (fractions of the "
                f"planned epochs), got start={self.start}, end={self.end}"
            )
        if not self.start <= self.end:
            raise ValueError(
                f"weight schedule window must satisfy start <= end, got start={self.start}, "
                f"end={self.end}"
            )
        if self.shape in ("sigmoid", "exponential") and self.sharpness <= 0:
            raise ValueError(f"weight schedule sharpness must be > 0, got {self.sharpness}")

    def __call__(self, info: EpochInfo) -> float:
        return self.at(info.fraction)

    def at(self, x: float) -> float:
        if self.kind == "constant":
            return 1.0
        r = ramp(x, self.shape, self.start, self.end, self.sharpness)
        return r if self.kind == "ramp_up" else 1.0 - r

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> WeightSchedule:
        return cls(**(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.kind == "constant":
            return "1"
        extra = f",k={self.sharpness:g}" if self.shape in ("sigmoid", "exponential") else ""
        return f"{self.kind}[{self.shape}{extra}]({self.start:g}->{self.end:g})"


def warmup(epochs: float, of_epochs: float) -> WeightSchedule:
    """The published linear warm-up ``min(e / epochs, 1)`` for a recipe of ``of_epochs``."""
    return WeightSchedule(kind="ramp_up", shape="linear", start=0.0, end=epochs / of_epochs)


@dataclass(frozen=True)
class Handoff:
    """The W -> KL hand-off of WKL (methods.md §6).

    ``complementary``: one ramp for both sides; the W side gets 1 − r and the KL
    side r, and they cross (r = ½) exactly at ``center``, the transition epoch (a
    fraction in [0, 1]), always. The window has length ``width`` and is placed so that
    r(center) = ½: centred for the symmetric shapes, shifted by the exponential's
    crossing point t* (:func:`crossing`) otherwise; ``step`` switches at ``center``
    (a point window). The window is *not* clipped to [0, 1]: where it extends beyond
    training, training sees only the part inside (the ramp clips t), and the crossing
    stays at ``center`` (clipping moved it: centre 0.2, width 1 crossed at 0.35).
    ``independent``: each side has its own shape and window (``w_*`` and ``kl_*``).
    The reference WKL is independent with W cosine on [0.625, 1] and KL cosine on [0, 1].
    """

    mode: str = "independent"
    w_term: str = "wkd_l"
    kl_term: str = "kl"
    # complementary mode
    shape: str = "cosine"
    center: float = field(default=0.5, metadata=FRACTION)
    width: float = field(default=1.0, metadata=FRACTION)
    sharpness: float = 10.0
    # independent mode (defaults: the published WKL schedule)
    w_shape: str = "cosine"
    w_start: float = field(default=0.625, metadata=FRACTION)
    w_end: float = field(default=1.0, metadata=FRACTION)
    w_sharpness: float = 10.0
    kl_shape: str = "cosine"
    kl_start: float = field(default=0.0, metadata=FRACTION)
    kl_end: float = field(default=1.0, metadata=FRACTION)
    kl_sharpness: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in ("complementary", "independent"):
            raise ValueError(
                f"handoff mode {self.mode!r} is not allowed; allowed: complementary, independent"
            )
        for name in ("center", "width", "sharpness"):
            _finite(f"handoff {name}", getattr(self, name))
        if not 0.0 <= self.center <= 1.0:
            raise ValueError(
                f"handoff center must be in [0, 1] (the transition as a fraction of the planned "
                f"epochs), got {self.center}"
            )
        if not self.width > 0:
            raise ValueError(
                f"handoff width must be > 0 (a fraction of the planned epochs), got {self.width}"
            )
        # building both schedules validates shapes and windows
        self.schedules()

    def window(self) -> tuple[float, float]:
        """The complementary window ``(lo, hi)``: r(center) = ½ exactly; not clipped.

        ``lo = center − t*·width``, ``hi = lo + width`` with t* the shape's crossing
        point on its window (½ for symmetric shapes); ``step`` is the point
        ``(center, center)``: its switch ``1[t ≥ ½]`` is at the centre of any
        symmetric window, and a point window makes it exactly ``x >= center``.
        """
        if self.shape == "step":
            return self.center, self.center
        lo = self.center - crossing(self.shape, self.sharpness) * self.width
        return lo, lo + self.width

    def schedules(self) -> tuple[WeightSchedule, WeightSchedule]:
        """(W-side schedule, KL-side schedule)."""
        if self.mode == "complementary":
            lo, hi = self.window()
            w = WeightSchedule("ramp_down", self.shape, lo, hi, self.sharpness, bounded=False)
            kl = WeightSchedule("ramp_up", self.shape, lo, hi, self.sharpness, bounded=False)
            return w, kl
        w = WeightSchedule("ramp_down", self.w_shape, self.w_start, self.w_end, self.w_sharpness)
        kl = WeightSchedule("ramp_up", self.kl_shape, self.kl_start, self.kl_end, self.kl_sharpness)
        return w, kl

    def earliest_change(self) -> float:
        """The first fraction of training at which either weight leaves its start value."""
        w, kl = self.schedules()
        return max(0.0, min(w.start, kl.start))
