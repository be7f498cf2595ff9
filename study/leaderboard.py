"""The leaderboard printed at the end of ``study/run.py``: searched configurations
(mean over their seeds) against each baseline, on the tuning (validation) split.

Rows come from the per-trial summaries the driver collected (``TrialSummary``); this
module imports neither Ray nor MLflow. The claims of a study (test split, fresh seeds,
paired statistics) are in ``study/report.py``, never here.
"""

from __future__ import annotations

import hashlib
import json
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


def config_group(overrides: dict[str, Any]) -> str:
    """A searched configuration's id, the same for all its seeds (the ``seed`` override
    is left out): the key that groups a configuration's repeats, here and in MLflow."""
    flat = {k: v for k, v in overrides.items() if k != "seed"}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def group_configs(trials: list[TrialSummary], repeats: int) -> list[dict[str, Any]]:
    """Searched trials grouped by configuration: one row per configuration with its mean
    and std over seeds. A row is complete when at least ``repeats`` seeds ran and every
    one ran its planned epochs; its ``trial_id`` is the first seed's trial."""
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.role == "trial":
            groups.setdefault(config_group(t.overrides), []).append(t)
    rows = []
    for key, ts in groups.items():
        ts = sorted(ts, key=lambda t: t.seed)
        vals = [t.value for t in ts if t.value is not None]
        if not vals:
            continue
        m, sd = mean_std(vals)
        rows.append(
            {
                "config_group": key,
                "trial_id": ts[0].trial_id,
                "trial_ids": [t.trial_id for t in ts],
                "value": m,
                "std": sd,
                "n": len(vals),
                "seeds": [t.seed for t in ts],
                "values": [t.value for t in ts],
                "epochs": min(t.epochs for t in ts),
                "planned_epochs": ts[0].planned_epochs,
                "status": "ERROR" if any(t.status == "ERROR" for t in ts) else "TERMINATED",
                "complete": len(ts) >= repeats and all(t.complete for t in ts),
                "overrides": {k: v for k, v in ts[0].overrides.items() if k != "seed"},
            }
        )
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    return statistics.fmean(values), statistics.stdev(values)


def leaderboard(
    trials: list[TrialSummary], metric: str, mode: str, top: int = 5, repeats: int = 1
) -> tuple[str, dict[str, Any]]:
    """Best searched configurations (complete ones first; mean over their seeds) against
    each baseline (mean ± std over seeds)."""
    sign = -1.0 if mode == "max" else 1.0
    searched = group_configs(trials, repeats)
    searched.sort(key=lambda g: (not g["complete"], sign * g["value"]))
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.role == "baseline":
            groups.setdefault(t.name, []).append(t)
    multi = any(g["n"] > 1 for g in searched)
    what = "searched configurations, mean over seeds" if multi else "searched trials"
    lines = [f"Leaderboard ({metric}, {mode}; {what} on the tuning split)", ""]
    spread = f"{'std':>7}{'seeds':>6}" if multi else ""
    lines.append(f"{'rank':<5}{'trial':<14}{metric:>16}{spread}{'epochs':>9}  overrides")
    for i, g in enumerate(searched[:top], 1):
        over = ", ".join(
            f"{k.removeprefix('losses.')}={_fmt(v)}" for k, v in sorted(g["overrides"].items())
        )
        mark = "" if g["complete"] else " (stopped early)"
        ep = f"{g['epochs']:>5}/{g['planned_epochs']:<3}"
        sd = f"{g['std']:>7.3f}{g['n']:>6}" if multi else ""
        lines.append(f"{i:<5}{g['trial_id']:<14}{g['value']:>16.3f}{sd}{ep}  {over}{mark}")
    failed = [t for t in trials if t.role == "trial" and t.status == "ERROR"]
    if failed:
        lines.append(f"     ({len(failed)} searched trial(s) failed; see their MLflow runs)")
    lines += ["", f"{'baseline':<19}{'mean':>10}{'std':>8}{'seeds':>7}  per seed"]
    summary: dict[str, Any] = {
        "searched": searched,
        "trials": [t.to_dict() for t in trials if t.role == "trial"],
        "baselines": {},
    }
    for name, ts in sorted(groups.items()):
        vals = [t.value for t in ts if t.value is not None and t.status == "TERMINATED"]
        m, s = mean_std(vals)
        per = ", ".join(f"s{t.seed}={_fmt(t.value)}" for t in sorted(ts, key=lambda t: t.seed))
        lines.append(f"{name:<19}{m:>10.3f}{s:>8.3f}{len(vals):>7}  {per}")
        summary["baselines"][name] = {"mean": m, "std": s, "n": len(vals), "values": vals}
    if searched and searched[0]["complete"] and groups:
        best = searched[0]["value"]
        lines.append("")
        for name, info in sorted(summary["baselines"].items()):
            if not math.isnan(info["mean"]):
                lines.append(f"best searched - {name}: {best - info['mean']:+.3f}")
    return "\n".join(lines), summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
