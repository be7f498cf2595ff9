"""WKD-L and WKD-F: Wasserstein distillation (Lv et al. 2024; methods.md §3, §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trainables.losses import functional as F
from trainables.losses.base import DistillLoss
from trainables.losses.projector import build_projector
from trainables.types import ModelOutputs

SOLVERS = ("reference", "converged")


@dataclass(frozen=True)
class WKDLParams:
    temperature: float = 8.0  # WKD-L CIFAR RN32x4->RN8x4 (methods.md §3)
    wd_weight: float = 600.0  # γ0, WKD-L CIFAR RN32x4->RN8x4 (methods.md §3)
    sinkhorn_reg: float = 0.05  # λ, published CIFAR setting (methods.md §3)
    sinkhorn_iters: int = 10  # L, published; the cap of the converged solver
    cost_sharpen: float = 1.0  # κ, published (methods.md §3, step 3)
    solver: str = "reference"  # the published truncated solver; γ0 is tuned to it
    tol: float = 1e-6  # converged solver: teacher-marginal L1 error to stop at
    debiased: bool = False  # converged solver: Sinkhorn divergence (methods.md §3)
    # what a collapsed reference solve does: "warn" reports it every epoch
    # (diag/<term>/collapsed, a warning, the MLflow run is tagged); "fail" ends the trial.
    # Not "fail" by default: with small costs (e.g. the digits teacher's CKA, 0.2-0.45) the
    # published λ = 0.05 already sits above the half-gap threshold of methods.md §3.
    on_collapse: str = "warn"

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"wkd_l.solver {self.solver!r} is not allowed; allowed: {SOLVERS}")
        if self.on_collapse not in ("fail", "warn"):
            raise ValueError(f"wkd_l.on_collapse {self.on_collapse!r}; allowed: fail, warn")
        if self.debiased and self.solver != "converged":
            raise ValueError("wkd_l.debiased needs solver: converged")
        if self.sinkhorn_reg <= 0:
            raise ValueError(f"wkd_l.sinkhorn_reg must be > 0, got {self.sinkhorn_reg}")


class SinkhornCollapse(RuntimeError):
    """The reference solver's plan stayed near diag(p̃_s) (methods.md §3 detector)."""


class WKDLLoss(DistillLoss):
    """WKD-L = L_t + γ(e)·WD over non-target classes (methods.md §3).

    Parts: ``target`` (L_t at T = 1, never decayed) and ``wasserstein`` (coefficient
    γ0 = ``wd_weight``, follows the term's schedule). Diagnostics: the teacher-marginal
    error of the plan, the collapse threshold ½‖p̃_s − p̃_t‖₁ and a collapse flag.
    """

    name = "wkd_l"
    Params = WKDLParams
    unscheduled_parts = frozenset({"target"})
    diagnostic_keys = frozenset({"marginal_error", "marginal_gap", "collapsed"})
    needs_cost = True

    def __init__(self, params: WKDLParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature
        self.register_buffer("cost", torch.empty(0), persistent=False)

    def set_cost(self, raw: Tensor) -> None:
        """Sharpen the raw D = 1 − CKA once; kept out of state_dict (rebuilt from the cache)."""
        self.cost = F.sharpen_cost(raw.float(), self.params.cost_sharpen).to(self.cost.device)

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        if self.cost.numel() == 0:
            raise ValueError("wkd_l needs a cost matrix: none was given (cost.path)")
        if self.cost.shape != (num_classes, num_classes):
            raise ValueError(
                f"wkd_l cost matrix is {tuple(self.cost.shape)}, the data has {num_classes} classes"
            )

    def coefficients(self) -> dict[str, float]:
        return {"target": 1.0, "wasserstein": self.params.wd_weight}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        p = self.params
        out = F.wkd_logit(
            student.logits,
            teacher.logits,
            target,
            self.cost,
            p.temperature,
            p.sinkhorn_reg,
            p.sinkhorn_iters,
            p.solver,
            tol=p.tol,
            debiased=p.debiased,
        )
        with torch.no_grad():
            gap = _non_target_l1(student.logits, teacher.logits, target, p.temperature)
        collapsed = (out.marginal_error > 0.5 * gap).float()
        return {
            "target": out.target,
            "wasserstein": out.wasserstein,
            "marginal_error": out.marginal_error.detach(),
            "marginal_gap": gap,
            "collapsed": collapsed,
        }


def _non_target_l1(zs: Tensor, zt: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Batch mean of ‖p̃_s − p̃_t‖₁ over the non-target classes at temperature T."""
    mask = torch.nn.functional.one_hot(target, zs.shape[1]).bool()
    ps = torch.softmax((zs.float() / temperature).masked_fill(mask, float("-inf")), dim=1)
    pt = torch.softmax((zt.float() / temperature).masked_fill(mask, float("-inf")), dim=1)
    return (ps - pt).abs().sum(1).mean()


@dataclass(frozen=True)
class WKDFParams:
    mean_weight: float = 4.0  # ρ, WKD-F CIFAR RN32x4->RN8x4 (methods.md §4)
    grid: int = 1  # G, WKD-F CIFAR RN32x4->RN8x4 (4 for WRN40-2->SNV1)
    eps: float = 1e-5  # σ = sqrt(var + eps), published (methods.md §4)
    student_stage: int = -1  # last stage (configurable, methods.md §4)
    teacher_stage: int = -1
    projector: str = "convreg"  # "convreg" (CIFAR) | "bottleneck" (ImageNet)


class WKDFLoss(DistillLoss):
    """WKD-F = w_F(e)·(ρ·L_mean + L_std): diagonal-Gaussian W2² of feature maps (§4).

    The projector (conv + BN + ReLU) is created in ``setup`` from the real feature
    shapes, with the loss-module random stream, and trained with the student.
    """

    name = "wkd_f"
    Params = WKDFParams

    def __init__(self, params: WKDFParams) -> None:
        super().__init__(params)
        self.projector: torch.nn.Module | None = None

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        fs = student.features[self.params.student_stage]
        ft = teacher.features[self.params.teacher_stage]
        self.projector = build_projector(
            tuple(fs.shape[1:]), tuple(ft.shape[1:]), kind=self.params.projector
        ).to(fs.device)

    def coefficients(self) -> dict[str, float]:
        return {"mean": self.params.mean_weight, "std": 1.0}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor):  # type: ignore[override]
        if self.projector is None:
            raise RuntimeError("wkd_f.setup() was not called")
        fs = self.projector(student.features[self.params.student_stage])
        ft = teacher.features[self.params.teacher_stage]
        mean_term, std_term = F.wkd_feature(fs, ft, self.params.grid, self.params.eps)
        return {"mean": mean_term, "std": std_term}
