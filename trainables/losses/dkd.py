"""Decoupled KD (methods.md §2) — also the KL side of WKL (§6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trainables.losses import functional as F
from trainables.losses.base import DistillLoss
from trainables.types import ModelOutputs


@dataclass(frozen=True)
class DKDParams:
    temperature: float = 4.0  # DKD CIFAR default (methods.md §2)
    alpha: float = 1.0  # TCKD weight, DKD CIFAR default
    beta: float = 8.0  # NCKD weight, DKD CIFAR default (2 or 6 for some pairs; WKL uses 2)


class DKDLoss(DistillLoss):
    """DKD = α·TCKD + β·NCKD (Zhao et al. 2022). The warm-up min(e/20, 1) is a schedule."""

    name = "dkd"
    Params = DKDParams

    def __init__(self, params: DKDParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature

    def coefficients(self) -> dict[str, float]:
        return {"tckd": self.params.alpha, "nckd": self.params.beta}

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        if num_classes <= 2:
            raise ValueError(
                f"dkd needs more than 2 classes (NCKD is undefined), got {num_classes}"
            )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        tckd, nckd = F.dkd(student.logits, teacher.logits, target, self.params.temperature)
        return {"tckd": tckd, "nckd": nckd}
