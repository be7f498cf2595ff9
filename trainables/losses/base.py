"""The loss interface and the Criterion that sums weighted parts.

A ``DistillLoss`` returns *unweighted* named parts; the ``Criterion`` owns every
weight: ``weight(part) = term weight × weight_schedule(epoch) × part coefficient``,
except for the parts a loss declares unscheduled (WKD-L's target term L_t is
never decayed, methods.md §3/§6). Schedules are pure functions of the epoch, so
resuming needs no schedule state; loss *state* (GKL's class prior, WKD-F's
projector, the WKD cost matrix) lives in the modules as parameters and buffers,
so ``state_dict()`` and the optimizer pick it up with no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trainables.schedules import WeightSchedule
from trainables.types import EpochInfo, ModelOutputs


class DistillLoss(nn.Module):
    """Base class of every loss term.

    Subclasses set ``name`` (the registry key), ``Params`` (a frozen dataclass whose
    defaults cite their source) and implement ``forward`` returning a dict of
    unweighted parts. Keys listed in ``diagnostic_keys`` are reported, never summed.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    unscheduled_parts: ClassVar[frozenset[str]] = frozenset()
    diagnostic_keys: ClassVar[frozenset[str]] = frozenset()
    #: temperature used for the alignment diagnostics of methods.md §6 (None: not a logit loss)
    temperature: float | None = None
    #: the family needs the class cost matrix (the driver builds it once; ``set_cost``)
    needs_cost: ClassVar[bool] = False
    #: the family reads the teacher's outputs (a criterion of CE alone trains a teacher)
    needs_teacher: ClassVar[bool] = True
    #: headline diagnostics this family contributes: metric name -> weighted part; the loop
    #: reports ``diag/<name>`` = the sum of that part over the terms of this family (the
    #: loss-evolution figures plot them, e.g. WKD-L's ``w`` = γ(e)·WD)
    headline_parts: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Any) -> None:
        super().__init__()
        self.params = params

    # -- the interface -------------------------------------------------------------
    @classmethod
    def study_check(cls, params: Any) -> tuple[str, str, str] | None:
        """A check a study runs on every corner of its search space before anything
        starts, for problems that only show inside training (e.g. a solver that collapses
        silently at some settings). Returns ``(param, what is wrong, what is allowed)`` or
        None. Per-value checks belong in ``Params.__post_init__``."""
        return None

    def set_cost(self, raw: Tensor) -> None:
        """Receive the raw class cost matrix (families with ``needs_cost``)."""
        raise NotImplementedError(f"{self.name} does not use a cost matrix")

    def coefficients(self) -> dict[str, float]:
        """Fixed coefficient of each summed part (e.g. DKD's α and β)."""
        raise NotImplementedError

    def forward(  # type: ignore[override]
        self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def setup(self, student: ModelOutputs, teacher: ModelOutputs, num_classes: int) -> None:
        """Called once with a sample batch before the optimizer is built (lazy shapes)."""

    def on_epoch_start(self, info: EpochInfo) -> None:
        """Called before the first batch of every epoch."""

    def on_batch_end(self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor) -> None:
        """Called after every training batch (under no_grad)."""

    def on_epoch_end(self, info: EpochInfo) -> None:
        """Called after the last training batch of every epoch (before the checkpoint)."""

    def epoch_health(self, diag: dict[str, float], epoch: int) -> HealthIssue | None:
        """Judge this term's epoch from its own diagnostics (``diagnostic_keys``, epoch
        means over batches, keyed without the ``diag/<term>/`` prefix).

        Returns None when healthy, else a :class:`HealthIssue`: the loop warns (one
        line on stderr) or, when ``fatal``, ends the trial with ``LossUnhealthy``. A
        family that can fail silently (a truncated or collapsed solver) says so here.
        """
        return None

    def describe(self) -> str:
        return f"{self.name}({_params_str(self.params)})"


@dataclass(frozen=True)
class HealthIssue:
    """What :meth:`DistillLoss.epoch_health` found: one line, and whether to stop."""

    message: str
    fatal: bool = False


def _params_str(params: Any) -> str:
    if params is None or not hasattr(params, "__dataclass_fields__"):
        return ""
    keep = []
    for f in fields(params):
        v = getattr(params, f.name)
        if isinstance(v, float | int | str | bool):
            keep.append(f"{f.name}={v:g}" if isinstance(v, float) else f"{f.name}={v}")
    return ",".join(keep)


@dataclass(frozen=True)
class Term:
    """One weighted loss of the Criterion."""

    name: str
    loss: DistillLoss
    weight: float
    weight_schedule: WeightSchedule


@dataclass
class CriterionOutput:
    total: Tensor
    #: weighted parts "term/part" -> tensor (what was summed)
    parts: dict[str, Tensor]
    #: unweighted diagnostics "term/key" -> tensor
    diagnostics: dict[str, Tensor]
    #: term weight × weight_schedule of each term at this epoch ("weight/<term>")
    weights: dict[str, float]


class Criterion(nn.Module):
    """Σ_terms weight · weight_schedule(epoch) · Σ_parts coefficient · part."""

    def __init__(self, terms: list[Term]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a Criterion needs at least one loss term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate loss term names: {names}")
        self.terms = list(terms)
        # registered so that .to(device), state_dict() and parameters() see loss state
        self.losses = nn.ModuleDict({t.name: t.loss for t in terms})

    @property
    def needs_teacher(self) -> bool:
        return any(t.loss.needs_teacher for t in self.terms)

    def term_weights(self, info: EpochInfo) -> dict[str, float]:
        return {t.name: t.weight * t.weight_schedule(info) for t in self.terms}

    def forward(  # type: ignore[override]
        self, student: ModelOutputs, teacher: ModelOutputs, target: Tensor, info: EpochInfo
    ) -> CriterionOutput:
        weights = self.term_weights(info)
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        diags: dict[str, Tensor] = {}
        for term in self.terms:
            raw = term.loss(student, teacher, target)
            coef = term.loss.coefficients()
            for key, value in raw.items():
                if key in term.loss.diagnostic_keys:
                    diags[f"{term.name}/{key}"] = value.detach()
                    continue
                if key not in coef:
                    raise KeyError(f"loss {term.name!r} returned part {key!r} with no coefficient")
                if key in term.loss.unscheduled_parts:
                    w = term.weight * coef[key]  # e.g. WKD-L's L_t: never decayed
                else:
                    w = weights[term.name] * coef[key]
                weighted = value * w
                parts[f"{term.name}/{key}"] = weighted
                total = weighted if total is None else total + weighted
        assert total is not None
        return CriterionOutput(total, parts, diags, weights)

    # hooks fan out to every loss
    def setup(self, student: ModelOutputs, teacher: ModelOutputs | None, num_classes: int) -> None:
        for t in self.terms:
            t.loss.setup(student, teacher, num_classes)  # type: ignore[arg-type]  # None: no term needs it

    def on_epoch_start(self, info: EpochInfo) -> None:
        for t in self.terms:
            t.loss.on_epoch_start(info)

    @torch.no_grad()
    def on_batch_end(
        self, student: ModelOutputs, teacher: ModelOutputs | None, target: Tensor
    ) -> None:
        for t in self.terms:
            t.loss.on_batch_end(student, teacher, target)  # type: ignore[arg-type]  # None: no term needs it

    def on_epoch_end(self, info: EpochInfo) -> None:
        for t in self.terms:
            t.loss.on_epoch_end(info)

    def describe(self) -> str:
        """A readable formula, e.g. ``1*ce + 600*ramp_down[cosine](0.625->1)*wkd_l(...)``."""
        out = []
        for t in self.terms:
            sched = (
                "" if t.weight_schedule.kind == "constant" else f"{t.weight_schedule.describe()}*"
            )
            out.append(f"{t.weight:g}*{sched}{t.loss.describe()}")
        return " + ".join(out)

    def kl_temperature(self) -> float:
        """Temperature of the alignment diagnostics: the first logit loss's, else 1."""
        for t in self.terms:
            if t.loss.temperature is not None:
                return float(t.loss.temperature)
        return 1.0
