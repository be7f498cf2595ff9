"""The Ray side of a study's driver: start (or join) Ray, run each phase as a Tune
experiment (baselines, search, final runs), and summarise what ran.

``study/run.py`` decides what to run; this module is the only place in ``study/`` that
builds Tuners. Ray is imported inside the functions: ``study/run.py`` must set Ray's
auth environment (``secure_ray_env``) before anything imports Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.interrupts import STOP
from study.resources import ResourceUnavailable, resource_problem
from study.spec import StudySpec
from trainables.config import resolve_trial

REPO = Path(__file__).resolve().parents[1]
#: the Ray phases of a study, in order (each its own Tune experiment under <storage>/ray)
PHASES = ("baselines", "search", "final")
#: a final run's headline: the last epoch's test top-1 (never a best-epoch pick)
FINAL_METRIC = "test/top1"


def ray_address(args: argparse.Namespace) -> str | None:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS`` (set by ``ray job submit``),
    else None: a private local instance."""
    return args.address or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None) -> None:
    """Join ``address`` or start a private local Ray (after :func:`secure_ray_env`)."""
    import ray

    env = os.environ
    env.setdefault("RAY_DEDUP_LOGS", "1")
    # num_to_keep forces experiment snapshots; frequent with short epochs, harmless
    env.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    env.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray's default loggers write CSV, JSON and TensorBoard files for every result; MLflow is
    # the record here, so only result.json is kept (Result.metrics_dataframe reads it)
    env.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if address:
        # WARNING: not Ray's "Connecting to existing Ray cluster" lines (the study says it)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # "local": always a private instance. Without it Ray attaches to any cluster a
        # `ray start` left on this machine (its address file under /tmp/ray), and a study
        # would silently share another user's cluster.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
        )


def cluster_resource_check(address: str, per_trial: dict[str, float]) -> tuple[str | None, int]:
    """``--dry-run`` on a cluster: join it as a driver (nothing is started on it), check
    that one trial fits a node (:func:`study.resources.check_resources`), leave. Returns the
    problem line (None when it fits) and the number of alive nodes."""
    import ray

    from study.resources import check_resources, cluster_nodes

    start_ray(address)
    try:
        nodes = cluster_nodes()
        alive = sum(1 for n in nodes if n.get("Alive", n.get("alive", False)))
        return check_resources(per_trial, nodes), alive
    finally:
        ray.shutdown()


def route_ray_logs(storage: Path, *, verbose: bool) -> Path:
    """Ray Tune's own messages (a failed trial's full traceback, warnings) and the driver's
    Python warnings go to ``<storage>/study.log``; the console keeps the study's one line
    per trial. With ``verbose`` they go to both."""
    import logging

    log_file = storage / "study.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Python warnings raised in the driver by Ray and Optuna (e.g. "define-by-run function
    # took 1.0 seconds") go there too
    logging.captureWarnings(True)
    # "ray._private.worker": unhandled errors of trials cut short (their futures never read)
    for name in ("ray.tune", "ray.train", "ray.air", "ray._private.worker", "py.warnings"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = verbose
    # MLflow's own errors (a SQLAlchemy traceback per failed write during an outage or on a
    # full disk): the tracker queues the write and says so in one line; details in the log
    mlflow_logger = logging.getLogger("mlflow")
    if not verbose:
        for h in list(mlflow_logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                mlflow_logger.removeHandler(h)
        mlflow_logger.propagate = False
    mlflow_logger.addHandler(handler)
    return log_file


def _progress_label(config: dict[str, Any]) -> str:
    """``kd seed 1`` for a baseline or a final run; nothing extra for a searched trial."""
    base = str(config.get("base", "search"))
    if base == "search":
        return ""
    parts = base.split(":")
    if parts[0] == "final" and len(parts) == 3:
        return f"{parts[1]} seed {parts[2]}"
    name, _, seed = base.partition(":")
    return f"{name} seed {seed}" if seed else name


def run_tuners(
    spec: StudySpec,
    args: argparse.Namespace,
    storage: Path,
    bases: dict[str, dict[str, Any]],
    tracker: Any,
    describe: Any,
    n_trials: int,
    say: Any,
    plan_final: Callable[[list[Any]], dict[str, dict[str, Any]]] | None = None,
) -> list[Any]:
    """Ray's part of a study: the baselines, the search, then the final runs that
    ``plan_final`` derives from what ran before (none when it returns nothing)."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study.callbacks import MLflowStudyCallback, StateSigningCallback, StorageGuard
    from study.integrity import load_key, sign
    from study.progress import ProgressCallback
    from study.run import optuna_url
    from study.space import build_scheduler, build_searcher, param_space
    from trainables.trainable import trainable_with_resources

    start_ray(ray_address(args))
    STOP.install()  # ray.init set its own SIGTERM handler (sys.exit, no state saved)
    # Tune would wait forever for a node that can hold a trial: refuse in one line instead
    problem = resource_problem(spec.resources)
    if problem:
        ray.shutdown()
        raise ResourceUnavailable(problem)
    epochs = spec.epochs
    ray_dir = storage / "ray"
    state_key = load_key(create=True)
    log_file = route_ray_logs(storage, verbose=args.verbose)
    res = spec.resources
    summaries: list[Any] = []

    def run_phase(
        name: str,
        phase_bases: dict[str, dict[str, Any]],
        searcher: Any,
        scheduler: Any,
        space: dict[str, Any],
        num_samples: int,
        total: int,
        metric: str,
    ) -> None:
        say(
            f"[{PHASES.index(name) + 3}/{len(PHASES) + 2}] {name}: {total} trial(s), "
            f"{epochs} epochs, {spec.concurrency} at a time"
        )
        trainable = trainable_with_resources(phase_bases, res)
        callbacks = [
            MLflowStudyCallback(
                tracker, describe, max_iterations=epochs, outputs_dir=str(storage / "trials")
            ),
            ProgressCallback(
                name,
                total,
                metric,
                epochs,
                quiet=args.quiet,
                outputs_dir=str(storage / "trials"),
                log_file=str(log_file),
                label=_progress_label,
            ),
            JsonLoggerCallback(),
            StorageGuard(storage),  # a full or read-only disk stops the study in one line
            StateSigningCallback(state_key),  # last: it signs what Ray just saved
        ]
        run_config = tune.RunConfig(
            name=name,
            storage_path=str(ray_dir),
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.num_to_keep),
        )
        exp_path = ray_dir / name
        if args.resume and (exp_path / "tuner.pkl").exists():
            tuner = tune.Tuner.restore(
                str(exp_path), trainable, resume_unfinished=True, resume_errored=True
            )
            reattach_callbacks(tuner, callbacks)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=num_samples,
                    max_concurrent_trials=spec.concurrency if searcher is None else None,
                    trial_name_creator=lambda t: t.trial_id,
                    trial_dirname_creator=lambda t: t.trial_id,
                    # reuse worker processes: a fresh one per trial costs seconds of
                    # imports, as much as a short digits trial (bench_ray_overhead.py)
                    reuse_actors=True,
                ),
                run_config=run_config,
            )
        # Ray wrote tuner.pkl while building the tuner: sign it at once
        sign(exp_path, [exp_path / "tuner.pkl"], state_key)
        # a signal stops Ray as its own Ctrl-C does (state saved, trials resumable) and
        # raises StudyInterrupted here: no summary of cut trials, no next phase
        with STOP.tune_run():
            grid = tuner.fit()
        summaries.extend(summarize(grid, name, spec, bases))

    try:
        metric = spec.objective.reported_metric
        if not args.skip_baselines and spec.baselines:
            names = sorted(k for k in bases if k != "search")
            grid_space = {"base": tune.grid_search(names)}
            run_phase(
                "baselines",
                {k: bases[k] for k in names},
                None,
                None,
                grid_space,
                1,
                len(names),
                metric,
            )
        if n_trials:
            run_phase(
                "search",
                {"search": bases["search"]},
                build_searcher(spec, epochs, optuna_url(args, storage)),
                build_scheduler(spec, epochs),
                param_space(spec),
                1 if spec.searcher.kind == "grid" else spec.samples * spec.repeats,
                n_trials,
                metric,
            )
        if plan_final is not None:
            final = plan_final(summaries)
            if final:
                bases.update(final)  # describe() resolves final runs through bases too
                names = sorted(final)
                run_phase(
                    "final",
                    final,
                    None,
                    None,
                    {"base": tune.grid_search(names)},
                    1,
                    len(names),
                    FINAL_METRIC,
                )
    finally:
        ray.shutdown()
    return summaries


def reattach_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Callbacks are not restored with a tuner and ``Tuner.restore`` takes no run config:
    set ours on the restored one. Ray's private state, reached here only;
    ``tests/test_private_apis.py`` fails if a Ray upgrade moves it."""
    tuner._local_tuner._run_config.callbacks = callbacks


def summarize(
    grid: Any, phase: str, spec: StudySpec, bases: dict[str, dict[str, Any]]
) -> list[Any]:
    from study.leaderboard import TrialSummary

    metric = FINAL_METRIC if phase == "final" else spec.objective.reported_metric
    role = {"baselines": "baseline", "search": "trial"}.get(phase, phase)
    out = []
    for r in grid:
        m = r.metrics or {}
        resolved = resolve_trial(bases, r.config or {})
        base, overrides, full = resolved.base, resolved.overrides, resolved.full
        out.append(
            TrialSummary(
                trial_id=str(m.get("trial_id") or r.path.rstrip("/").split("/")[-1]),
                role=role,
                name=_summary_name(role, base, full),
                seed=int(full.get("seed", 0)),
                value=float(m[metric]) if metric in m else None,
                epochs=int(m.get("training_iteration", 0)),
                planned_epochs=spec.epochs,
                status="ERROR" if r.error else "TERMINATED",
                overrides=overrides,
            )
        )
    return out


def _summary_name(role: str, base: str, full: dict[str, Any]) -> str:
    """A searched trial's family, a baseline's name (``kd:0``), a final run's arm
    (``final:wkl-1:1000``)."""
    if role == "trial":
        return str(full.get("family"))
    return base.split(":")[1] if role == "final" else base.split(":")[0]
