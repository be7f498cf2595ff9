"""Distillation losses: pure math in ``functional``, modules + one explicit registry here."""

from __future__ import annotations

from trainables.losses.base import Criterion, CriterionOutput, DistillLoss, HealthIssue, Term
from trainables.losses.dkd import DKDLoss
from trainables.losses.gkl import GKLLoss
from trainables.losses.kd import CELoss, KDLoss
from trainables.losses.kd2m import KD2MLoss
from trainables.losses.wkd import WKDFLoss, WKDLLoss

#: registry key = YAML ``loss`` name = config subtree = metric prefix
LOSSES: dict[str, type[DistillLoss]] = {
    "ce": CELoss,
    "kd": KDLoss,
    "dkd": DKDLoss,
    "wkd_l": WKDLLoss,
    "wkd_f": WKDFLoss,
    "gkl": GKLLoss,
    "kd2m": KD2MLoss,
}

__all__ = ["LOSSES", "Criterion", "CriterionOutput", "DistillLoss", "HealthIssue", "Term"]
