"""What a trial looks like in MLflow: its run name, params and tags.

Names a person can scan in the run list: ``wkl-3fa2c1 complementary cosine center=0.42``
for a searched trial (family, configuration id, its searched values), ``kd-seed0`` for a
baseline, ``final/wkl-1-seed1000`` for a final run. Params are the trial's *active*
values, one dotted spelling per name: a searched parameter whose ``when:`` condition does
not hold in this trial (``handoff.w_start`` of a complementary hand-off) is left out, so
no run shows a value that played no part. Tags say what a run is (``role``, ``family``,
``baseline``, ``arm``, ``published_point``) so the UI can filter and group by them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from study.leaderboard import config_group
from study.spec import StudySpec
from study.spec_checks import condition_holds
from trainables.config import TrialConfig, flatten, resolve_trial

#: run names stay short enough for the run list
MAX_NAME = 100
#: not a tag: the MLflow callback logs it as the run's ``config.json`` artifact
CONFIG_TAG = "config_json"


def short_values(overrides: dict[str, Any]) -> str:
    """``complementary cosine center=0.42 kl_end=0.138``: categorical values as words,
    numbers as ``<last key>=<3 significant digits>``."""
    words = []
    for key in sorted(overrides):
        if key == "seed":
            continue
        v = overrides[key]
        if isinstance(v, str):
            words.append(v)
        elif isinstance(v, bool) or v is None:
            words.append(f"{key.rsplit('.', 1)[-1]}={v}")
        elif isinstance(v, int | float):
            words.append(f"{key.rsplit('.', 1)[-1]}={v:.3g}")
    return " ".join(words)


def is_published_point(spec: StudySpec, overrides: dict[str, Any]) -> bool:
    flat = {k: v for k, v in overrides.items() if k != "seed"}
    return any(flat == {k: v for k, v in p.items() if k != "seed"} for p in spec.points)


def describe_trial(
    spec: StudySpec,
    bases: dict[str, dict[str, Any]],
    provenance: dict[str, str],
    storage: str,
    config: dict[str, Any],
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """``(run name, params, tags)`` of the trial with Ray config ``config``."""
    from study.final import load_arms, parse_base_key

    resolved = resolve_trial(bases, config)
    base, over, full, cfg = resolved.base, resolved.overrides, resolved.full, resolved.config
    role = str(full.get("role", "trial"))
    family = str(full.get("family", spec.name))
    flat = flatten(full)
    # a searched parameter whose when: condition fails in this trial played no part in it
    inactive = {p.name for p in spec.search if not condition_holds(p, {}, full)}
    params = {k: v for k, v in flat.items() if not k.startswith("output.") and k not in inactive}
    params["config_hash"] = cfg.config_hash()
    params.update({k: v for k, v in provenance.items() if k.startswith(("version.", "teacher."))})
    params["data.fingerprint"] = provenance.get("data.fingerprint", "")
    params["criterion"] = criterion_formula(cfg)
    tags = {
        "role": role,
        "family": family,
        "seed": str(cfg.seed),
        "losses": ",".join(sorted(t.loss for t in cfg.losses.values())),
        "config_hash": cfg.config_hash(),
        "git_sha": provenance.get("git_sha", ""),
        "searched": ",".join(f"{k}={v}" for k, v in sorted(over.items()))[:4000],
        "split": "test" if cfg.final else "val",
    }
    if role == "trial":  # the seeds of one searched configuration share this tag
        group = config_group(over)
        tags["config_group"] = group
        name = f"{family}-{group[:6]} {short_values(over)}".strip()
        if is_published_point(spec, over):
            tags["published_point"] = "true"
            name = f"{family}-published {short_values(over)}".strip()
    elif role == "baseline":
        tags["baseline"] = base.split(":")[0]
        name = base.replace(":", "-seed")
    else:  # final
        parsed = parse_base_key(base)
        arm = parsed[0] if parsed else base
        tags["arm"] = arm
        loaded = load_arms(Path(storage))
        for a in loaded[0] if loaded else []:
            if a.name == arm:
                tags["arm_kind"] = a.kind
                if a.kind == "searched":
                    tags["config_group"] = str(a.config_group)
                    tags["searched"] = ",".join(f"{k}={v}" for k, v in sorted(a.overrides.items()))[
                        :4000
                    ]
                else:
                    tags["baseline"] = arm
        name = f"final/{arm}-seed{cfg.seed}"
    # the whole resolved config, for the run's artifact (params hold the active values)
    tags[CONFIG_TAG] = json.dumps(full, indent=1, sort_keys=True, default=str)
    return name[:MAX_NAME], params, tags


def criterion_formula(cfg: TrialConfig) -> str:
    from trainables.loop import build_criterion

    with contextlib.suppress(Exception):
        import torch

        cost = None
        if cfg.cost.path:
            cost = torch.load(cfg.cost.path, map_location="cpu", weights_only=True)
        return build_criterion(cfg, cost).describe()[:500]
    return ""


def ui_view(experiment_id: str | None, *, final: bool, metric: str) -> str:
    """The MLflow UI fragment that opens the study's runs in the model-training view, as a
    flat list (a filter or a sort other than by date un-nests child runs): the final runs
    by their test top-1 when there are any, else every trial by the objective."""
    from urllib.parse import quote

    flt = "tags.role = 'final'" if final else "tags.role != 'study'"
    key = f"metrics.`{'test/top1' if final else metric}`"
    query = (
        f"workflowType=machine_learning&searchFilter={quote(flt)}"
        f"&orderByKey={quote(key)}&orderByAsc=false"
    )
    return f"#/experiments/{experiment_id}/runs?{query}"
