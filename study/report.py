"""Tables from a finished study: the leaderboard printed at the end of ``study/run.py``.

Rows come from the per-trial summaries the driver collected (``TrialSummary``);
this module imports neither Ray nor MLflow, so the paper-style reports of later
milestones (mean ± std, confidence intervals, paired tests) can build on it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    role: str  # trial | baseline
    name: str  # baseline name, or the searched trial's short description
    seed: int
    value: float | None  # the objective (reported metric) at the last epoch reached
    epochs: int  # epochs reached
    planned_epochs: int
    status: str  # TERMINATED | ERROR
    overrides: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.status == "TERMINATED" and self.epochs >= self.planned_epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    return statistics.fmean(values), statistics.stdev(values)


def leaderboard(
    trials: list[TrialSummary], metric: str, mode: str, top: int = 5
) -> tuple[str, dict[str, Any]]:
    """Best searched trials (complete ones first) against each baseline (mean ± std over seeds)."""
    sign = -1.0 if mode == "max" else 1.0
    searched = [t for t in trials if t.role == "trial" and t.value is not None]
    searched.sort(key=lambda t: (not t.complete, sign * (t.value or 0.0)))
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.role == "baseline":
            groups.setdefault(t.name, []).append(t)
    lines = [f"Leaderboard ({metric}, {mode}; searched trials on the tuning split)", ""]
    lines.append(f"{'rank':<5}{'trial':<14}{metric:>16}{'epochs':>9}  overrides")
    for i, t in enumerate(searched[:top], 1):
        over = ", ".join(
            f"{k.removeprefix('losses.')}={_fmt(v)}" for k, v in sorted(t.overrides.items())
        )
        mark = "" if t.complete else " (stopped early)"
        ep = f"{t.epochs:>5}/{t.planned_epochs:<3}"
        lines.append(f"{i:<5}{t.trial_id:<14}{t.value:>16.3f}{ep}  {over}{mark}")
    failed = [t for t in trials if t.role == "trial" and t.status == "ERROR"]
    if failed:
        lines.append(f"     ({len(failed)} searched trial(s) failed; see their MLflow runs)")
    lines += ["", f"{'baseline':<19}{'mean':>10}{'std':>8}{'seeds':>7}  per seed"]
    summary: dict[str, Any] = {"searched": [t.to_dict() for t in searched], "baselines": {}}
    for name, ts in sorted(groups.items()):
        vals = [t.value for t in ts if t.value is not None and t.status == "TERMINATED"]
        m, s = mean_std(vals)
        per = ", ".join(f"s{t.seed}={_fmt(t.value)}" for t in sorted(ts, key=lambda t: t.seed))
        lines.append(f"{name:<19}{m:>10.3f}{s:>8.3f}{len(vals):>7}  {per}")
        summary["baselines"][name] = {"mean": m, "std": s, "n": len(vals), "values": vals}
    if searched and searched[0].complete and groups:
        best = searched[0].value or 0.0
        lines.append("")
        for name, info in sorted(summary["baselines"].items()):
            if not math.isnan(info["mean"]):
                lines.append(f"best searched - {name}: {best - info['mean']:+.3f}")
    return "\n".join(lines), summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
