"""The only Ray entry point: Ray's dict config -> TrialConfig -> ``run_training``.

Ray's reporting API has changed often; everything Ray-specific is here and is
imported from ``ray.tune`` only (in Ray 2.60 ``ray.train.report`` raises inside
Tune trials). One report and one checkpoint per epoch; on restart (retry,
``Tuner.restore``, PBT exploit) the trial resumes from the checkpoint Ray hands
it, and the epoch comes from that checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.config import resolve_trial
from trainables.loop import LossUnhealthy, NonFiniteLoss, run_training

STATE_FILE = "state.pt"
_DETERMINISTIC = {"NonFiniteLoss": NonFiniteLoss, "LossUnhealthy": LossUnhealthy}


def train_trial(config: dict[str, Any], bases: dict[str, dict[str, Any]]) -> None:
    """Function trainable. ``bases`` (via ``tune.with_parameters``) maps a base name to a
    fully resolved nested trial config (absolute paths set by the driver);
    ``config["base"]`` picks one (default ``"search"``), the rest are overrides."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()  # read before the loop: the context is torn down later
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    if cpus >= 1:  # one intra-op thread per reserved CPU (oversubscription is very costly)
        torch.set_num_threads(int(cpus))
    cfg = resolve_trial(bases, config).config
    trial_dir = Path(cfg.output.dir) / trial_id if cfg.output.dir else None
    failure = trial_dir / "failure.json" if trial_dir else None
    if failure is not None and failure.is_file():
        # a deterministic failure (NaN, collapse) recurs on every retry: fail at once
        reason = json.loads(failure.read_text())
        raise _DETERMINISTIC[reason["reason"]](f"(again, not retried) {reason['message']}")
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        tmp = tempfile.mkdtemp(prefix="kdckpt_")
        try:
            torch.save(state, Path(tmp) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        run_training(cfg, report, resume, trial_dir=str(trial_dir) if trial_dir else None)
    except (NonFiniteLoss, LossUnhealthy) as exc:
        # a deterministic failure: keep the reason next to the trial's outputs
        if trial_dir is not None:
            trial_dir.mkdir(parents=True, exist_ok=True)
            reason = {"reason": type(exc).__name__, "message": str(exc)}
            (trial_dir / "failure.json").write_text(json.dumps(reason, indent=1))
        raise
    except Exception:
        if trial_dir is not None:
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / "error.txt").write_text(traceback.format_exc())
        raise


def trainable_with_resources(
    bases: dict[str, dict[str, Any]],
    resources: Mapping[str, float] | None = None,
    *,
    cpu: float | None = None,
    gpu: float | None = None,
) -> Any:
    """``train_trial`` bound to its bases, with per-trial resources: ``resources`` is the
    spec's flat request, ``{"cpu": 1.0, "gpu": 0.5, <custom name>: amount, ...}``
    (fractional GPU ok; keys other than cpu/gpu are Ray custom resources). ``cpu=`` /
    ``gpu=`` set or override those two (``benchmarks/bench_ray_overhead.py`` uses them)."""
    res = {"cpu": 1.0, "gpu": 0.0, **{k: float(v) for k, v in (resources or {}).items()}}
    if cpu is not None:
        res["cpu"] = float(cpu)
    if gpu is not None:
        res["gpu"] = float(gpu)
    custom = {k: v for k, v in res.items() if k not in ("cpu", "gpu")}
    fn = tune.with_parameters(train_trial, bases=bases)
    # Ray reads a "custom_resources" entry as the bundle of custom resources (any name,
    # even "custom_resources" itself, stays a plain custom resource inside it)
    request: dict[str, Any] = {"cpu": res["cpu"], "gpu": res["gpu"], "custom_resources": custom}
    return tune.with_resources(fn, request)
