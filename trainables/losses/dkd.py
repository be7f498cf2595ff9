"""Decoupled KD (methods.md §2) — also the KL side of WKL (§6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from trainables.losses import functional as F
from trainables.losses.base import DistillLoss
from trainables.types import ModelOutputs


@dataclass(frozen=True)
class DKDParams:
    """Defaults: DKD CIFAR (methods.md §2). The per-pair published values (β = 2 or 6 for
    some pairs) and WKL's KL side (α = 1, β = 2) are filled from :func:`published` by
    ``trainables.config`` when a config leaves them unset."""

    temperature: float = 4.0  # DKD CIFAR default (methods.md §2)
    tckd_weight: float = 1.0  # TCKD weight, DKD CIFAR default
    nckd_weight: float = 8.0  # NCKD weight, DKD CIFAR default (2 or 6 for some pairs; WKL uses 2)

    def __post_init__(self) -> None:
        for name in ("temperature", "tckd_weight", "nckd_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"dkd.{name} must be a finite number, got {v!r}")
        if self.temperature <= 0:
            raise ValueError(f"dkd.temperature must be > 0, got {self.temperature}")
        for name in ("tckd_weight", "nckd_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"dkd.{name} must be >= 0, got {getattr(self, name)}")


#: The published DKD settings per CIFAR-100 (teacher, student) pair (methods.md §2: the
#: authors' per-pair configs): α = 1, T = 4 everywhere; β = 8 except the pairs below.
PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    pair: {"tckd_weight": 1.0, "nckd_weight": nckd_weight, "temperature": 4.0}
    for pair, nckd_weight in {
        ("resnet32x4", "resnet8x4"): 8.0,
        ("resnet56", "resnet20"): 2.0,
        ("resnet110", "resnet32"): 2.0,
        ("wrn_40_2", "wrn_16_2"): 6.0,
        ("wrn_40_2", "wrn_40_1"): 6.0,
        ("vgg13", "vgg8"): 6.0,
        ("vgg13", "MobileNetV2"): 6.0,
        ("resnet32x4", "ShuffleV1"): 8.0,
        ("wrn_40_2", "ShuffleV1"): 8.0,
        ("ResNet50", "MobileNetV2"): 8.0,
        ("resnet32x4", "ShuffleV2"): 8.0,
    }.items()
}

#: WKL's KL side (methods.md §6): DKD(α = 1, β = 2) for every pair, at the pair's WKL
#: temperature (= its WKD-L T); unknown pairs take the reference RN32x4->RN8x4 T = 8,
#: like WKD-L's generic default.
WKL_KL_SIDE: dict[str, float] = {"tckd_weight": 1.0, "nckd_weight": 2.0, "temperature": 8.0}
WKL_TEMPERATURE: dict[tuple[str, str], float] = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 6.0,
}


def published(
    teacher: str, student: str, family: str = "", settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The published DKD params for a pair (empty for an unknown pair: generic defaults).

    In a WKL trial (``family: wkl``) DKD is the KL side: α = 1, β = 2 for every pair
    (not DKD's own β = 8), at the pair's published WKL temperature.
    """
    if family == "wkl":
        out: dict[str, Any] = dict(WKL_KL_SIDE)
        out["temperature"] = WKL_TEMPERATURE.get((teacher, student), out["temperature"])
        return out
    return dict(PUBLISHED.get((teacher, student), {}))


class DKDLoss(DistillLoss):
    """DKD = α·TCKD + β·NCKD (Zhao et al. 2022). The warm-up min(e/20, 1) is a schedule."""

    name = "dkd"
    Params = DKDParams
    published = staticmethod(published)

    def __init__(self, params: DKDParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature

    def coefficients(self) -> dict[str, float]:
        return {"tckd": self.params.tckd_weight, "nckd": self.params.nckd_weight}

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        if num_classes <= 2:
            raise ValueError(
                f"dkd needs more than 2 classes (NCKD is undefined), got {num_classes}"
            )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        tckd, nckd = F.dkd(student.logits, teacher.logits, target, self.params.temperature)
        return {"tckd": tckd, "nckd": nckd}
