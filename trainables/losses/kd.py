"""Cross-entropy and Hinton's KD (methods.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as torch_f
from torch import Tensor

from trainables.losses import functional as F
from trainables.losses.base import DistillLoss
from trainables.types import ModelOutputs


@dataclass(frozen=True)
class CEParams:
    label_smoothing: float = 0.0  # 0 in every published CIFAR recipe (methods.md §9)


class CELoss(DistillLoss):
    """Cross-entropy with the labels (the student's own task loss)."""

    name = "ce"
    Params = CEParams
    needs_teacher = False

    def coefficients(self) -> dict[str, float]:
        return {"ce": 1.0}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        ls = self.params.label_smoothing
        return {"ce": torch_f.cross_entropy(student.logits, target, label_smoothing=ls)}


@dataclass(frozen=True)
class KDParams:
    temperature: float = 4.0  # CIFAR KD, T = 4 (methods.md §1)


class KDLoss(DistillLoss):
    """KD = T² · KL(p_t^T ‖ p_s^T), batch mean (Hinton et al. 2015; methods.md §1)."""

    name = "kd"
    Params = KDParams

    def __init__(self, params: KDParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature

    def coefficients(self) -> dict[str, float]:
        return {"kd": 1.0}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        return {"kd": F.kd(student.logits, teacher.logits, self.params.temperature)}
