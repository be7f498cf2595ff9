"""Checks a study runs on its search space before anything starts, and the helpers the
space compiler shares with them (which parameters are active, the corners of a space).

- ``check_fidelity``: a trial scheduler must not judge trials before they can differ (its first
  rung after every warm-up and after the first epoch at which the searched weight schedules
  differ);
- ``check_loss_families``: every loss family's own ``study_check`` on every corner.

Errors go through the spec's one-line error function (``<file>: <key>: <what> (<allowed>)``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NoReturn

from study.spec import _MISSING, Param, StudySpec
from trainables.config import ConfigError, TrialConfig, get_path, with_overrides
from trainables.losses import LOSSES
from trainables.schedules import WeightSchedule

Err = Callable[..., NoReturn]


def schedule_profile(cfg: TrialConfig) -> list[tuple[float, ...]]:
    """Each term's weight-schedule value at every epoch 1..E (what a trial scheduler could
    tell apart)."""
    scheds: dict[str, WeightSchedule] = cfg.schedules()
    return [
        tuple(scheds[n].at(e / cfg.epochs) for n in sorted(scheds))
        for e in range(1, cfg.epochs + 1)
    ]


def warmup_end(cfg: TrialConfig) -> int:
    """The last epoch of any loss or LR warm-up (ramp_up schedules outside the hand-off)."""
    handoff_terms = {cfg.handoff.kl_term, cfg.handoff.w_term} if cfg.handoff else set()
    ends = [math.ceil(cfg.optim.warmup * cfg.epochs)]
    for name, t in cfg.losses.items():
        if name not in handoff_terms and t.weight_schedule.kind == "ramp_up":
            ends.append(math.ceil(t.weight_schedule.end * cfg.epochs))
    return max(ends)


def corner_samples(spec: StudySpec, limit: int = 64) -> list[dict[str, Any]]:
    """Deterministic extreme configurations of the space (+ the points), respecting ``when``."""

    choices = []
    for p in spec.search:
        if p.type == "categorical":
            choices.append(list(p.values))
        else:
            lo, hi = p.low, p.high
            assert lo is not None and hi is not None
            mid = math.sqrt(lo * hi) if p.log else (lo + hi) / 2
            vals = [lo, mid, hi]
            choices.append([int(round(v)) for v in vals] if p.type == "int" else vals)
    out: list[dict[str, Any]] = [dict(pt) for pt in spec.points]
    for combo in itertools.islice(itertools.product(*choices), 4096):
        flat = active_params(spec, dict(zip([p.name for p in spec.search], combo, strict=True)))
        if flat not in out:
            out.append(flat)
        if len(out) >= limit + len(spec.points):
            break
    return out


def active_params(spec: StudySpec, flat: dict[str, Any]) -> dict[str, Any]:
    """Drop the parameters whose ``when`` condition does not hold (in order)."""
    out: dict[str, Any] = {}
    for p in spec.search:
        if p.name in flat and condition_holds(p, out, spec.trial):
            out[p.name] = flat[p.name]
    return out


def condition_holds(p: Param, chosen: dict[str, Any], trial: dict[str, Any]) -> bool:
    for dep, allowed in p.when.items():
        value = chosen[dep] if dep in chosen else get_path(trial, dep, _MISSING)
        if value not in allowed:
            return False
    return True


def check_fidelity(spec: StudySpec, epochs: int, err: Err) -> None:
    """Refuse trial schedulers that would judge trials before they can differ (issue #4)."""
    sch = spec.trial_scheduler
    if sch.kind in ("fifo", "pbt") or not spec.search:
        check_loss_families(
            [TrialConfig.from_dict(with_overrides(spec.trial, f)) for f in corner_samples(spec)],
            err,
        )
        return
    rung = sch.grace_epochs(epochs)
    configs = []
    for flat in corner_samples(spec):
        try:
            configs.append(TrialConfig.from_dict(with_overrides(spec.trial, flat)))
        except ConfigError as exc:
            err("search", f"a corner of the space is not a valid trial: {exc}", "narrow the ranges")
    warm = max(warmup_end(c) for c in configs)
    if rung <= warm:
        err(
            "trial_scheduler.grace_period",
            f"first rung at epoch {rung} of {epochs} does not exceed the loss/LR warm-up "
            f"(ends at epoch {warm})",
            f"use grace_period > {warm / epochs:.3f}",
        )
    check_loss_families(configs, err)
    profiles = [schedule_profile(c) for c in configs]
    first_diff = next(
        (e + 1 for e in range(epochs) if len({p[e] for p in profiles}) > 1),
        None,
    )
    searched_schedule = any(
        p.name.startswith("handoff.") or ".weight_schedule." in p.name for p in spec.search
    )
    if searched_schedule and first_diff is not None and rung < first_diff:
        err(
            "trial_scheduler.grace_period",
            f"the first rung (epoch {rung} of {epochs}) comes before the searched weight "
            f"schedules can differ (epoch {first_diff}): {sch.kind} would stop trials on noise",
            f"use grace_period >= {first_diff / epochs:.3f}, widen the searched windows, "
            "or trial_scheduler.kind: fifo with fewer epochs",
        )


def check_loss_families(configs: list[TrialConfig], err: Err) -> None:
    """Each loss family's own study check (``DistillLoss.study_check``) on every corner of
    the space: problems that would only show inside training are refused up front."""
    for cfg in configs:
        for name, term in cfg.losses.items():
            found = LOSSES[term.loss].study_check(term.params)
            if found is not None:
                key, what, allowed = found
                err(f"losses.{name}.{key}", what, allowed)
