"""``--dry-run``: everything that can be checked without training, writing or starting
anything — the data loads, the teacher is there and loads into its architecture, one
trial's resources fit this machine, the MLflow server answers — and a list of what was
skipped and why. The same one-line messages as a real start (``teacher_missing_line``
is also what ``run.py`` prints when the registry has no teacher).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.cli_checks import without_userinfo
from study.ray_phases import ray_address
from study.spec import StudySpec

#: what a teacher checkpoint may be (appended to every teacher refusal)
CHECKPOINT_FORMS = (
    "a state dict of {arch} for {classes} classes, plain or mdistiller's {{'model': ...}}"
)


def teacher_missing_line(arch: str, dataset: str, teachers_dir: Path) -> str:
    """The refusal for a registry without the study's teacher (only the embedded digits
    teacher is trained automatically)."""
    return (
        f"trial.teacher: no {arch} teacher for {dataset} in {teachers_dir} (only the "
        f"embedded digits teacher is trained automatically): set trial.teacher.checkpoint "
        f"to a checkpoint (mdistiller ckpt_epoch_240.pth or a state dict), pass "
        f"--train-teacher, or run python study/teacher.py --dataset {dataset} --arch {arch} "
        f"--out {teachers_dir}"
    )


@dataclass
class DryRun:
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problem: str | None = None


def dry_run(spec: StudySpec, args: argparse.Namespace, teachers_dir: Path) -> DryRun:
    """Run the checks in order; the first failure is ``problem`` (one line, as a real
    start would print it) and later checks are not attempted."""
    out = DryRun()
    try:
        _check(spec, args, teachers_dir, out)
    except _Refused as exc:
        out.problem = str(exc)
    return out


class _Refused(Exception):
    pass


def _check(spec: StudySpec, args: argparse.Namespace, teachers_dir: Path, out: DryRun) -> None:
    from study.teacher_checkpoint import CheckpointError, load_teacher
    from study.teacher_registry import find_teacher, registry_folder
    from trainables.data import load_configured

    typed = spec.trial_config
    data, arch = typed.data, typed.teacher.arch
    # -- data: what the driver loads for the teacher and the cost matrix ---------------
    try:
        bundle = load_configured(data, offline=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _Refused(f"trial.data.dataset: {_one_line(exc)}") from None
    out.checked.append(
        f"data {data.dataset}: {len(bundle.train.labels)} train / {len(bundle.eval.labels)} "
        f"val images, {bundle.num_classes} classes (tuning split {data.val_fraction:g}, "
        f"seed {data.split_seed})"
    )
    # -- teacher: an external checkpoint loads strictly; a registry entry exists -------
    forms = CHECKPOINT_FORMS.format(arch=arch, classes=bundle.num_classes)
    if typed.teacher.checkpoint:
        try:
            load_teacher(
                arch, bundle.num_classes, typed.teacher.checkpoint, in_channels=bundle.in_channels
            )
        except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
            line = f"trial.teacher.checkpoint: {_one_line(exc)} (allowed: {forms})"
            raise _Refused(line) from None
        out.checked.append(f"teacher {arch}: {typed.teacher.checkpoint} loads strictly")
    else:
        folder = registry_folder(teachers_dir, data.dataset, arch)
        try:
            info = find_teacher(
                teachers_dir, data.dataset, arch, data.val_fraction, data.split_seed
            )
            if info is not None:
                load_teacher(
                    arch, bundle.num_classes, info.ckpt_path, in_channels=bundle.in_channels
                )
        except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
            raise _Refused(f"trial.teacher: {_one_line(exc)}") from None
        if info is not None:
            acc = "" if info.val_top1 is None else f" (val top-1 {100 * info.val_top1:.2f}%)"
            out.checked.append(f"teacher {arch}: registry entry {folder} loads strictly{acc}")
        elif data.dataset == "digits" or args.train_teacher:
            out.skipped.append(
                f"teacher {arch}: not in {teachers_dir}; the study would train it first"
            )
        else:
            raise _Refused(teacher_missing_line(arch, data.dataset, teachers_dir))
    # -- resources: one trial on this machine (a cluster is asked when the study joins it)
    res = spec.resources
    address = ray_address(args)
    if address:
        _check_cluster_resources(address, res, out)
    else:
        _check_local_resources(res, out)
    # -- MLflow: a server answers its health check (no experiment or run is created) ----
    uri = args.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        problem = _mlflow_health(uri)
        if problem:
            raise _Refused(f"--tracking-uri: {problem}")
        out.checked.append(f"MLflow server {without_userinfo(uri)} answers")
    else:
        out.skipped.append("MLflow store: not opened (a dry run creates no file)")
    out.skipped.append("training, the cost matrix and Ray: a dry run starts nothing")


def _check_cluster_resources(address: str, res: dict[str, float], out: DryRun) -> None:
    from study.ray_phases import cluster_resource_check

    try:
        problem, alive = cluster_resource_check(address, res)
    except Exception as exc:  # a cluster that refuses us (token, version) says why
        raise _Refused(f"--address {address}: cannot join the cluster: {_one_line(exc)}") from None
    if problem:
        raise _Refused(problem)
    asked = " + ".join(f"{v:g} {k}" for k, v in res.items() if v > 0) or "nothing"
    out.checked.append(
        f"resources: {asked} per trial fit a node of the cluster at {address} "
        f"({alive} alive node(s))"
    )


def _check_local_resources(res: dict[str, float], out: DryRun) -> None:
    import torch

    cpus = float(os.cpu_count() or 1)
    gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    for key, have, name in (("cpu", cpus, "CPUs"), ("gpu", gpus, "GPUs")):
        if res.get(key, 0.0) > have + 1e-9:
            raise _Refused(
                f"resources.{key}: a trial asks for {res[key]:g} {name}; this machine has "
                f"{have:g} (pass --address to run on a cluster that has them)"
            )
    custom = sorted(k for k in res if k not in ("cpu", "gpu") and res[k] > 0)
    out.checked.append(
        f"resources: {res.get('cpu', 0):g} CPU + {res.get('gpu', 0):g} GPU per trial fit this "
        f"machine ({cpus:g} CPUs, {gpus:g} GPUs)"
    )
    if custom:
        out.skipped.append(
            f"resources.custom ({', '.join(custom)}): known only to a running Ray node"
        )


def _mlflow_health(uri: str) -> str | None:
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        r = requests.get(url, timeout=10)
    except requests.RequestException as exc:
        return f"{without_userinfo(uri)} unreachable ({type(exc).__name__})"
    if r.status_code != 200:
        return f"{without_userinfo(uri)}/health answered HTTP {r.status_code}"
    return mlflow_credentials_problem(uri)


def mlflow_credentials_problem(uri: str) -> str | None:
    """A server with authentication (MLflow's basic-auth app, a proxy) that refuses this
    user's credentials (``$MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``TOKEN``): one line,
    before anything starts -- an outage is different (the study queues its writes). None
    when the server accepts them, has no authentication, or cannot be asked now."""
    import requests

    env = os.environ
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    headers = {}
    if env.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        r = requests.post(
            url,
            json={"max_results": 1},
            auth=(user, password or "") if user else None,
            headers=headers,
            timeout=10,
        )
    except requests.RequestException:
        return None  # unreachable: the tracker's outbox covers an outage
    if r.status_code in (401, 403):
        given = "were refused" if user or headers else "are needed"
        return (
            f"{without_userinfo(uri)} answered HTTP {r.status_code}: credentials {given} "
            "(allowed: an account of that server in $MLFLOW_TRACKING_USERNAME and "
            "$MLFLOW_TRACKING_PASSWORD, or $MLFLOW_TRACKING_TOKEN)"
        )
    return None


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__: list[Any] = [
    "CHECKPOINT_FORMS",
    "DryRun",
    "dry_run",
    "mlflow_credentials_problem",
    "teacher_missing_line",
]
