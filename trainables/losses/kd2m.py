"""KD²M: feature distribution matching over the batch (methods.md §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from trainables.losses import functional as F
from trainables.losses._feature_math import LOGIT_COSTS, gaussian_cw2
from trainables.losses.base import DistillLoss
from trainables.types import ModelOutputs

#: the rows of KD²M's published table (methods.md §8): empirical W2, CW2, JW2 and the
#: Gaussian W2, CW2 and KL
DISTANCES = ("w2", "cw2", "jw2", "gaussian_w2", "gaussian_cw2", "gaussian_kl")


@dataclass(frozen=True)
class KD2MParams:
    distance: str = "gaussian_w2"  # the Gaussian rows of the KD²M results (methods.md §8)
    diagonal: bool = True  # the Gaussian rows use the diagonal form (methods.md §8)
    ridge: float = 1e-4  # ε·I for the full-covariance KL when n < d (our choice, stated)
    logit_cost_weight: float = 1.0  # JW2 logit-cost weight (not published; 1 = equal footing)
    logit_cost: str = "sqeuclidean"  # JW2 ℓ: squared logit distance (§8 default) | "kl"

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"kd2m.distance {self.distance!r}; allowed: {DISTANCES}")
        if self.logit_cost not in LOGIT_COSTS:
            raise ValueError(f"kd2m.logit_cost {self.logit_cost!r}; allowed: {LOGIT_COSTS}")
        for name in ("ridge", "logit_cost_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"kd2m.{name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"kd2m.{name} must be >= 0, got {v}")


class KD2MLoss(DistillLoss):
    """λ_d · D(F_s, F_t) on pooled penultimate features; published λ_d = 1e-4 (term weight).

    Student and teacher pooled features must have the same width (the published
    ResNet34 -> ResNet18 pair both have 512).
    """

    name = "kd2m"
    Params = KD2MParams

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        ds, dt = student.pooled.shape[1], teacher.pooled.shape[1]
        if ds != dt:
            raise ValueError(
                f"kd2m needs equal pooled feature widths, student {ds} vs teacher {dt}"
            )

    def coefficients(self) -> dict[str, float]:
        return {"distance": 1.0}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        p = self.params
        fs, ft = student.pooled, teacher.pooled.detach()
        if p.distance == "w2":
            d = F.w2_empirical(fs, ft)
        elif p.distance == "cw2":
            d = F.cw2(fs, ft, target)
        elif p.distance == "jw2":
            d = F.jw2(
                fs, ft, student.logits, teacher.logits.detach(), p.logit_cost_weight, p.logit_cost
            )
        elif p.distance == "gaussian_w2":
            d = F.gaussian_w2(fs, ft, p.diagonal)
        elif p.distance == "gaussian_cw2":
            d = gaussian_cw2(fs, ft, target, p.diagonal)
        else:
            d = F.gaussian_kl(fs, ft, p.diagonal, p.ridge)
        return {"distance": d}
