"""GKL / IKL: generalized (decoupled) KL (Cui et al.; methods.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainables.losses import functional as F
from trainables.losses.base import DistillLoss
from trainables.types import EpochInfo, ModelOutputs


@dataclass(frozen=True)
class GKLParams:
    """Paper naming: total = α·wMSE + β·softCE (the released configs swap ALPHA/BETA)."""

    temperature: float = 4.0  # T, GKL CIFAR (methods.md §7)
    prior_temperature: float = 4.0  # T2, GKL CIFAR (IKL uses 100)
    gamma: float = 0.05  # γ, GKL CIFAR RN32x4->RN8x4
    alpha: float = 16.0  # wMSE weight (paper α), GKL CIFAR RN32x4->RN8x4
    beta: float = 1.0  # softCE weight (paper β), GKL CIFAR RN32x4->RN8x4
    class_prior: bool = True  # GI: class-wise global information, RN32x4->RN8x4 "yes"
    normalize: str = "weight"  # "weight" (GKL) | "batch" (IKL, with gamma = 1)

    def __post_init__(self) -> None:
        if self.normalize not in ("weight", "batch"):
            raise ValueError(f"gkl.normalize {self.normalize!r}; allowed: weight, batch")


class GKLLoss(DistillLoss):
    """GKL = α·wMSE + β·softCE, O(B·C) (methods.md §7 identity, not Algorithm 2).

    The class prior (GI) is module state: buffers ``prior`` (used, frozen during an
    epoch), ``prior_sum``/``prior_count`` (this epoch's accumulator) and
    ``prior_ready`` (False during epoch 1, which uses the uniform 1/C). It survives
    checkpoint/resume through ``state_dict()``.
    """

    name = "gkl"
    Params = GKLParams

    def __init__(self, params: GKLParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature
        self.register_buffer("prior", torch.empty(0))
        self.register_buffer("prior_sum", torch.empty(0))
        self.register_buffer("prior_count", torch.empty(0))
        self.register_buffer("prior_ready", torch.zeros((), dtype=torch.bool))

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        dev = student.logits.device
        if self.prior.numel() == 0:
            self.prior = torch.full((num_classes, num_classes), 1.0 / num_classes, device=dev)
            self.prior_sum = torch.zeros(num_classes, num_classes, device=dev)
            self.prior_count = torch.zeros(num_classes, device=dev)

    def coefficients(self) -> dict[str, float]:
        return {"wmse": self.params.alpha, "soft_ce": self.params.beta}

    def on_epoch_start(self, info: EpochInfo) -> None:
        self.prior_sum.zero_()
        self.prior_count.zero_()

    def on_batch_end(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor) -> None:
        p = torch.softmax(teacher.logits.float() / self.params.prior_temperature, dim=1)
        self.prior_sum.index_add_(0, target, p)
        self.prior_count.index_add_(0, target, torch.ones_like(target, dtype=p.dtype))

    def on_epoch_end(self, info: EpochInfo) -> None:
        seen = self.prior_count > 0
        # classes absent this epoch keep their previous row
        self.prior[seen] = self.prior_sum[seen] / self.prior_count[seen, None]
        self.prior_ready.fill_(True)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        p = self.params
        prior = self.prior if p.class_prior else None
        wmse, soft_ce = F.gkl(
            student.logits,
            teacher.logits,
            target,
            p.temperature,
            p.gamma,
            prior,
            p.prior_temperature,
            normalize=p.normalize,
        )
        return {"wmse": wmse, "soft_ce": soft_ce}
