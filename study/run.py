"""Run a KD study: ``python study/run.py --space search_spaces/wkl_schedule.yaml``.

Order of work (nothing half-done on bad input): validate the spec (exit 2, no
Ray, no run, no file written) -> study directory -> teacher and cost matrix on
the driver -> MLflow experiment + parent run (the driver is the only writer) ->
Ray -> baselines (each seed) -> the search -> leaderboard and the MLflow UI
command. Exit codes: 0 done, 2 bad input, 1 failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import study  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.spec import SpecError, StudySpec, load_spec
from trainables.config import ConfigError, TrialConfig, flatten, resolve_trial

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="study/run.py", description="Run a knowledge-distillation hyperparameter study."
    )
    p.add_argument("--space", required=True, help="study YAML (search_spaces/*.yaml)")
    p.add_argument("--num-samples", type=int, help="searched trials (overrides samples:)")
    p.add_argument("--max-epochs", type=int, help="planned epochs (schedules are fractions)")
    p.add_argument("--storage", help="study directory (default: ./studies/<name>)")
    p.add_argument(
        "--address",
        help="existing Ray cluster, host:port (default: $RAY_ADDRESS if set, else a private "
        "local Ray)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow server, e.g. http://host:5000 (default: a "
        "SQLite store in the study directory)",
    )
    p.add_argument("--experiment", help="MLflow experiment name (default: the study name)")
    p.add_argument("--resume", action="store_true", help="continue the study in --storage")
    p.add_argument("--dry-run", action="store_true", help="validate and print; start nothing")
    p.add_argument("--seed", type=int, help="searcher seed (overrides searcher.seed)")
    p.add_argument(
        "--teachers-dir",
        help="teacher registry, shared between studies (default: <storage>/teachers)",
    )
    p.add_argument(
        "--train-teacher",
        action="store_true",
        help="allow training a missing teacher on a non-embedded dataset",
    )
    p.add_argument("--skip-baselines", action="store_true", help="run the search only")
    p.add_argument("--quiet", action="store_true", help="only the final leaderboard")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own messages and tracebacks on the console too (default: the study log)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # first, before anything imports Ray: Ray reads its auth mode once, at import
    auth_error = secure_ray_env(ray_address(args))
    if auth_error:
        return bad_input(auth_error)
    # MLflow's INFO lines (database set-up) drown the progress; warnings still show
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("num_samples", "samples"),
        ("max_epochs", "trial.epochs"),
        ("seed", "searcher.seed"),
    ):
        v = getattr(args, flag)
        if v is not None:
            if v < (0 if flag == "seed" else 1):
                return bad_input(f"--{flag.replace('_', '-')}: {v} (must be >= 1)")
            overrides[key] = v
    try:
        spec = load_spec(args.space, overrides)
    except SpecError as exc:
        return bad_input(str(exc))
    student_ckpt = spec.trial_config.student.checkpoint
    if student_ckpt and not Path(student_ckpt).is_file():
        return bad_input(
            f"{args.space}: trial.student.checkpoint: {student_ckpt} is not a file "
            "(pretrained student weights: a state dict readable with weights_only=True)"
        )
    from study.space import trial_count

    n_trials = trial_count(spec)
    n_base = 0 if args.skip_baselines else len(spec.baselines) * len(spec.seeds)
    if args.dry_run:
        print(json.dumps(spec.compiled(), indent=2, default=str))
        per = (
            f" ({n_trials // spec.repeats} configurations x {spec.repeats} seeds "
            f"{spec.search_seeds})"
            if spec.repeats > 1
            else ""
        )
        print(
            f"\n{n_trials} searched trial(s){per} + {n_base} baseline run(s) "
            f"({len(spec.baselines)} baselines x {len(spec.seeds)} seeds), "
            f"{spec.epochs} epochs each, up to {spec.concurrency} at once, "
            f"{spec.resources['cpu']:g} CPU + {spec.resources['gpu']:g} GPU per trial"
        )
        return EXIT_OK
    storage = Path(args.storage or Path("studies") / spec.name).resolve()
    marker = storage / "study.json"
    if args.resume and not marker.is_file():
        return bad_input(f"--resume: no study at {storage} (study.json missing)")
    if marker.is_file():
        old = json.loads(marker.read_text())
        if not args.resume:
            return bad_input(
                f"--storage: a study already exists at {storage} "
                "(pass --resume to continue it, or choose another --storage)"
            )
        if old.get("spec_hash") != spec.spec_hash():
            return bad_input(
                f"--resume: {args.space} differs from the spec this study was "
                f"started with ({storage / 'spec.json'}); a space cannot change on "
                "resume"
            )
    if args.resume:
        # before anything starts: Ray's restore unpickles these files (study/integrity.py)
        from study.integrity import IntegrityError, load_key, verify

        try:
            state_key = load_key(create=False)
            for exp_dir in sorted((storage / "ray").glob("*")):
                verify(exp_dir, state_key)
        except IntegrityError as exc:
            return bad_input(f"--resume: {exc}")
    try:
        return run_study(spec, args, storage, n_trials)
    except KeyboardInterrupt:
        print(f"\ninterrupted: resume with --resume --storage {storage}", file=sys.stderr)
        return EXIT_FAIL


def bad_input(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "ray", "optuna", "mlflow", "POT", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def needs_cost(spec: StudySpec) -> bool:
    from trainables.losses import LOSSES

    def uses(losses: dict[str, Any]) -> bool:
        return any(LOSSES[(v or {}).get("loss", k)].needs_cost for k, v in losses.items())

    if uses(spec.trial["losses"]) or any(uses(b.overrides["losses"]) for b in spec.baselines):
        return True
    return any(
        p.type == "categorical"
        and p.name.endswith(".loss")
        and any(str(v) in LOSSES and LOSSES[str(v)].needs_cost for v in p.values)
        for p in spec.search
    )


def run_study(spec: StudySpec, args: argparse.Namespace, storage: Path, n_trials: int) -> int:
    say = (lambda *a, **k: None) if args.quiet else print
    import logging

    for noisy in ("mlflow", "alembic", "optuna"):  # their INFO lines drown the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    study_id = hashlib.sha256(str(storage).encode()).hexdigest()[:12]

    # -- teacher and cost matrix, once, on the driver ------------------------------------
    from study.teacher import TeacherCheckpointError, TeacherNotFoundError, ensure_teacher_and_cost

    trial = spec.trial
    typed = spec.trial_config  # the defaults live in trainables/config.py, once
    data, dataset = typed.data, typed.data.dataset
    cost_cfg = trial.get("cost") or {}
    # nothing is written outside the study directory unless the user names the registry
    teachers_dir = Path(args.teachers_dir or storage / "teachers").resolve()
    say(f"[1/4] teacher {typed.teacher.arch} on {dataset} (registry {teachers_dir})")
    t0 = time.time()
    try:
        tc = ensure_teacher_and_cost(
            dataset,
            typed.teacher.arch,
            teachers_dir=teachers_dir,
            root=data.root,
            val_fraction=data.val_fraction,
            split_seed=data.split_seed,
            max_per_class_data=data.max_per_class,
            download=data.download,
            teacher_path=typed.teacher.checkpoint,
            allow_train=True if args.train_teacher else None,
            cost_kind=typed.cost.kind if needs_cost(spec) else None,  # type: ignore[arg-type]
            cost_seed=typed.cost.seed,
            cost_max_per_class=typed.cost.max_per_class,
        )
    except TeacherNotFoundError:
        arch = trial["teacher"]["arch"]
        return bad_input(
            f"trial.teacher: no {arch} teacher for {dataset} in {teachers_dir} (only the "
            f"embedded digits teacher is trained automatically): set trial.teacher.checkpoint "
            f"to a checkpoint (mdistiller ckpt_epoch_240.pth or a state dict), pass "
            f"--train-teacher, or run python study/teacher.py --dataset {dataset} --arch {arch} "
            f"--out {teachers_dir}"
        )
    except (TeacherCheckpointError, FileNotFoundError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        return bad_input(f"trial.teacher: {msg}")
    acc = tc.teacher.val_top1
    say(
        f"      {'trained' if tc.teacher.trained else 'reused'} {tc.teacher.ckpt_path.name} "
        f"(val top-1 {acc if acc is None else f'{acc:.2f}'}) in {time.time() - t0:.1f}s"
        + (f"; cost matrix {'cache hit' if tc.cost.cache_hit else 'built'}" if tc.cost else "")
    )

    # the study exists from here on (a refused teacher leaves no study behind)
    storage.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        meta = {
            "spec_hash": spec.spec_hash(),
            "space": str(Path(args.space).resolve()),
            "study_id": study_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (storage / "spec.json").write_text(json.dumps(spec.raw, indent=1, default=str))
        (storage / "study.json").write_text(json.dumps(meta, indent=1))

    resolved = dict(trial)
    resolved["teacher"] = {**trial["teacher"], "checkpoint": str(tc.teacher.ckpt_path)}
    if tc.cost is not None:
        resolved["cost"] = {**cost_cfg, "path": str(tc.cost.path), "sha256": tc.cost.sha256}
    resolved["output"] = {**(trial.get("output") or {}), "dir": str(storage / "trials")}
    if typed.student.checkpoint:  # trials run elsewhere: an absolute path (checked in main)
        resolved["student"] = {
            **trial["student"],
            "checkpoint": str(Path(typed.student.checkpoint).resolve()),
        }
    resolved.setdefault("family", spec.name)
    resolved["seed"] = trial.get("seed", spec.seeds[0])
    bases: dict[str, dict[str, Any]] = {"search": resolved}
    for b in spec.baselines:
        for seed in spec.seeds:
            tmp = StudySpec.baseline_config(spec, b, seed)
            for k in ("teacher", "student", "cost", "output"):
                tmp[k] = resolved[k] if k in resolved else tmp.get(k)
            tmp = {k: v for k, v in tmp.items() if v is not None}
            bases[f"{b.name}:{seed}"] = tmp
    for name, cfg in bases.items():  # already validated; this also checks the paths' types
        try:
            TrialConfig.from_dict(cfg, name)
        except ConfigError as exc:
            return bad_input(str(exc))

    provenance = {
        "git_sha": git_sha(),
        "spec_hash": spec.spec_hash(),
        "study_id": study_id,
        **{f"version/{k}": v for k, v in package_versions().items()},
        **tc.provenance(),
        "data/fingerprint": str(tc.teacher.meta.get("data_fingerprint", "")),
    }

    # -- MLflow: experiment + parent run, before any trial exists ------------------------
    from study.tracking import StudyTracker

    uri = args.tracking_uri or f"sqlite:///{storage / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        # MLflow's defaults retry a dead server for minutes per call; the tracker queues
        # writes in its outbox instead (nothing lost), so fail fast
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    experiment = args.experiment or spec.name
    tracker = StudyTracker(
        uri, experiment, study_id, outbox_path=str(storage / "mlflow_outbox.jsonl")
    )
    from study.space import startup_trials

    tracker.open_study(
        run_name=f"study:{spec.name}",
        params={
            "space": str(args.space),
            "samples": spec.samples,
            "epochs": spec.epochs,
            "searcher": spec.searcher.kind,
            "searcher.seed": spec.searcher.seed,
            "searcher.startup_trials": startup_trials(spec),
            "scheduler": spec.scheduler.kind,
            "scheduler.grace_epochs": spec.scheduler.grace_epochs(spec.epochs),
            "concurrency": spec.concurrency,
            "seeds": spec.seeds,
            "repeats": spec.repeats,
            "objective": spec.objective.reported_metric,
            **provenance,
        },
        tags={"role": "study", "study_name": spec.name, "git_sha": provenance["git_sha"]},
        texts={
            "spec.yaml": Path(args.space).read_text(),
            "compiled.json": json.dumps(spec.compiled(), indent=1, default=str),
        },
    )
    stale = tracker.close_stale_runs()
    if stale:
        say(f"      closed {len(stale)} run(s) left RUNNING by an earlier driver")

    def describe(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
        from study.report import config_group

        resolved = resolve_trial(bases, config)
        base_name, over, full, cfg = (
            resolved.base,
            resolved.overrides,
            resolved.full,
            resolved.config,
        )
        role = full.get("role", "trial")
        family = str(full.get("family", spec.name))
        name = base_name.replace(":", "-seed") if role == "baseline" else family
        params = {k: v for k, v in flatten(full).items() if not k.startswith("output.")}
        params["config_hash"] = cfg.config_hash()
        params.update(
            {k: v for k, v in provenance.items() if k.startswith(("version/", "teacher/"))}
        )
        params["data.fingerprint"] = provenance.get("data/fingerprint", "")
        params["criterion"] = _criterion_formula(cfg)
        tags = {
            "role": role,
            "family": family,
            "seed": str(cfg.seed),
            "losses": ",".join(sorted(t.loss for t in cfg.losses.values())),
            "config_hash": cfg.config_hash(),
            "git_sha": provenance["git_sha"],
            "searched": ",".join(f"{k}={v}" for k, v in sorted(over.items()))[:4000],
        }
        if role == "trial":  # the seeds of one searched configuration share this tag
            tags["config_group"] = config_group(over)
        if role == "baseline":
            tags["baseline"] = base_name.split(":")[0]
        return name, params, tags

    # -- Ray --------------------------------------------------------------------------
    address = ray_address(args)
    say("[2/4] starting Ray" + (f": cluster at {address}" if address else " (local)"))
    try:
        summaries = run_tuners(spec, args, storage, bases, tracker, describe, n_trials, say)
    except BaseException:
        # whatever stopped the driver (a Ray error, Ctrl-C), no MLflow run stays RUNNING:
        # the parent and its open children end KILLED; --resume reopens the study
        with contextlib.suppress(Exception):
            tracker.finish_study("KILLED")
        raise
    from study.report import leaderboard

    table, summary = leaderboard(
        summaries, spec.objective.reported_metric, spec.objective.mode, repeats=spec.repeats
    )
    (storage / "leaderboard.txt").write_text(table + "\n")
    (storage / "leaderboard.json").write_text(json.dumps(summary, indent=1, default=str))
    best = summary["searched"][0] if summary["searched"] else None
    ok = best is not None or n_trials == 0
    metrics = {"best/value": best["value"]} if best and best["value"] is not None else {}
    for name, info in summary["baselines"].items():
        if info["n"]:
            metrics[f"baseline/{name}/mean"] = info["mean"]
    tracker.finish_study(
        "FINISHED" if ok else "FAILED",
        metrics=metrics,
        tags={"best_trial": best["trial_id"], "best_config_group": best["config_group"]}
        if best
        else None,
        texts={"leaderboard.txt": table},
        known_trials=[s.trial_id for s in summaries],
    )
    print()
    print(table)
    print()
    if uri.startswith("sqlite:"):
        print(
            f"MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000   "
            f"(experiment '{experiment}')"
        )
    else:
        print(f"MLflow UI: {uri}  (experiment '{experiment}')")
    print(f"study directory: {storage}")
    return EXIT_OK if ok else EXIT_FAIL


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
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always a private instance. Without it Ray attaches to any cluster a
        # `ray start` left on this machine (its address file under /tmp/ray), and a study
        # would silently share another user's cluster.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
        )


def route_ray_logs(storage: Path, *, verbose: bool) -> Path:
    """Ray Tune's own messages (a failed trial's full traceback, warnings) go to
    ``<storage>/study.log``; the console keeps the study's one line per trial. With
    ``verbose`` they go to both."""
    import logging

    log_file = storage / "study.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray.tune", "ray.train", "ray.air"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = verbose
    return log_file


def _progress_label(config: dict[str, Any]) -> str:
    """``kd seed 1`` for a baseline; nothing extra for a searched trial (its id)."""
    base = str(config.get("base", "search"))
    if base == "search":
        return ""
    name, _, seed = base.partition(":")
    return f"{name} seed {seed}" if seed else name


def secure_ray_env(address: str | None) -> str | None:
    """Token authentication on, never off silently.

    Ray's gRPC servers listen on every interface of the machine (Ray offers no way to
    bind them to loopback), so the token is what keeps others out: without it anyone who
    reaches a port could submit code that runs as this user. A private local Ray gets a
    fresh random token for this driver only (in the environment its processes inherit;
    never written to disk). A cluster (``--address``) needs the cluster's token:
    ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.
    A user who sets the mode to "disabled" is obeyed, with a warning line. Returns an error
    line when a cluster needs a token and none is available (checked before anything
    starts).
    """
    env = os.environ
    mode = env.setdefault("RAY_AUTH_MODE", "token").lower()
    if mode == "disabled":
        print(
            "warning: Ray token authentication is OFF (the environment sets it so); anyone who "
            "can reach this machine's Ray ports can run code as you",
            file=sys.stderr,
        )
        return None
    if mode != "token":
        return f"$RAY_AUTH_MODE: {mode!r} (allowed: token, disabled)"
    has_token = bool(env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"))
    if address is None:
        if not has_token:
            import secrets

            env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        return None
    if not has_token and not (Path.home() / ".ray" / "auth_token").is_file():
        return (
            f"--address {address}: Ray token authentication is on and no token was found "
            "(set $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH to the cluster's token, or put it in "
            "~/.ray/auth_token)"
        )
    return None


def _criterion_formula(cfg: TrialConfig) -> str:
    from trainables.loop import build_criterion

    with contextlib.suppress(Exception):
        import torch

        cost = None
        if cfg.cost.path:
            cost = torch.load(cfg.cost.path, map_location="cpu", weights_only=True)
        return build_criterion(cfg, cost).describe()[:500]
    return ""


def run_tuners(
    spec: StudySpec,
    args: argparse.Namespace,
    storage: Path,
    bases: dict[str, dict[str, Any]],
    tracker: Any,
    describe: Any,
    n_trials: int,
    say: Any,
) -> list[Any]:
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study.callbacks import MLflowStudyCallback, StateSigningCallback
    from study.integrity import load_key, sign
    from study.progress import ProgressCallback
    from study.space import build_scheduler, build_searcher, param_space
    from trainables.trainable import trainable_with_resources

    start_ray(ray_address(args))
    epochs = spec.epochs
    ray_dir = storage / "ray"
    state_key = load_key(create=True)
    log_file = route_ray_logs(storage, verbose=args.verbose)
    res = spec.resources
    summaries: list[Any] = []
    try:
        phases: list[tuple[str, dict[str, dict[str, Any]], Any, Any, dict[str, Any], int]] = []
        if not args.skip_baselines and spec.baselines:
            names = sorted(k for k in bases if k != "search")
            phases.append(
                (
                    "baselines",
                    {k: bases[k] for k in names},
                    None,
                    None,
                    {"base": tune.grid_search(names)},
                    1,
                )
            )
        if n_trials:
            searcher = build_searcher(spec, epochs)
            phases.append(
                (
                    "search",
                    {"search": bases["search"]},
                    searcher,
                    build_scheduler(spec, epochs),
                    param_space(spec),
                    1 if spec.searcher.kind == "grid" else spec.samples * spec.repeats,
                )
            )
        for i, (name, phase_bases, searcher, scheduler, space, num_samples) in enumerate(phases):
            total = len(phase_bases) if name == "baselines" else n_trials
            say(
                f"[{3 + i}/4] {name}: {total} trial(s), {epochs} epochs, "
                f"{spec.concurrency} at a time"
            )
            trainable = trainable_with_resources(phase_bases, res["cpu"], res["gpu"])
            callbacks = [
                MLflowStudyCallback(
                    tracker, describe, max_iterations=epochs, outputs_dir=str(storage / "trials")
                ),
                ProgressCallback(
                    name,
                    total,
                    spec.objective.reported_metric,
                    epochs,
                    quiet=args.quiet,
                    outputs_dir=str(storage / "trials"),
                    log_file=str(log_file),
                    label=_progress_label,
                ),
                JsonLoggerCallback(),
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
            grid = tuner.fit()
            summaries += summarize(grid, name, spec, bases)
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
    from study.report import TrialSummary

    metric = spec.objective.reported_metric
    out = []
    for r in grid:
        m = r.metrics or {}
        resolved = resolve_trial(bases, r.config or {})
        base, overrides, full = resolved.base, resolved.overrides, resolved.full
        out.append(
            TrialSummary(
                trial_id=str(m.get("trial_id") or r.path.rstrip("/").split("/")[-1]),
                role="baseline" if phase == "baselines" else "trial",
                name=base.split(":")[0] if phase == "baselines" else str(full.get("family")),
                seed=int(full.get("seed", 0)),
                value=float(m[metric]) if metric in m else None,
                epochs=int(m.get("training_iteration", 0)),
                planned_epochs=spec.epochs,
                status="ERROR" if r.error else "TERMINATED",
                overrides=overrides,
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
