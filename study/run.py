"""Run a KD study: ``python study/run.py --space search_spaces/wkl_schedule.yaml``.

Order of work (nothing half-done on bad input): validate the spec (exit 2, no
Ray, no run, no file written) -> study directory -> teacher and cost matrix on
the driver -> MLflow experiment + parent run (the driver is the only writer) ->
Ray -> baselines (each seed) -> the search -> leaderboard and the MLflow UI
command. Exit codes: 0 done, 2 bad input, 1 failure (also: MLflow writes left
undelivered), 130/143 interrupted by SIGINT/SIGTERM, 74 the storage is full or
read-only (study/storage_faults.py; ``--resume`` continues both).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import study  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.cli_checks import (
    OneLineParser,
    check_cost_file,
    check_flags,
    check_space,
    dataset_classes,
    without_userinfo,
)
from study.interrupts import STOP, StudyInterrupted
from study.ray_phases import ray_address, run_tuners
from study.resources import ResourceUnavailable
from study.spec import SpecError, StudySpec, load_spec
from study.storage_faults import StorageFault, fault_behind, fault_line
from trainables.config import ConfigError, TrialConfig
from trainables.fsutil import atomic_write_text

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2
REPO = Path(__file__).resolve().parents[1]
#: the study's durable queue of MLflow writes (study/outbox.py), in the study directory
OUTBOX = "mlflow_outbox.jsonl"
#: how long the end of a study retries an unreachable MLflow before it gives up (seconds)
MLFLOW_WAIT_ENV = "KDSTUDY_MLFLOW_WAIT_S"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(
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
    p.add_argument(
        "--optuna-storage",
        help="Optuna's record of the search, an RDB URL (default: sqlite in the study "
        "directory, optuna.db); for optuna-dashboard and the report's importances",
    )
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
    p.add_argument(
        "--skip-final",
        action="store_true",
        help="stop after the search (no final runs on the test set; study/final.py runs them)",
    )
    p.add_argument("--quiet", action="store_true", help="only the final leaderboard")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own messages and tracebacks on the console too (default: the study log)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
                least = 0 if flag == "seed" else 1
                return bad_input(f"--{flag.replace('_', '-')}: {v} (must be >= {least})")
            overrides[key] = v
    space_error = check_space(args.space)
    if space_error:
        return bad_input(space_error)
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
    cost_path = spec.trial_config.cost.path
    if cost_path:
        cost_error = check_cost_file(cost_path, dataset_classes(spec.trial_config.data.dataset))
        if cost_error:
            return bad_input(f"{args.space}: {cost_error}")
    flag_error = check_flags(args, Path(args.storage or Path("studies") / spec.name).resolve())
    if flag_error:
        return bad_input(flag_error)
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
            f"{spec.resources['cpu']:g} CPU + {spec.resources['gpu']:g} GPU"
            + "".join(f" + {v:g} {k}" for k, v in spec.resources.items() if k not in ("cpu", "gpu"))
            + " per trial"
        )
        n_arms = (spec.final.top_k if n_trials else 0) + (
            0 if args.skip_baselines else len(spec.baselines)
        )
        print(
            "then "
            + (
                "no final runs (--skip-final)"
                if args.skip_final
                else f"{n_arms * len(spec.final.seeds)} final run(s) ({n_arms} arms x fresh "
                f"seeds {list(spec.final.seeds)}, full training set, evaluated on the test split)"
            )
        )
        from study.preflight import dry_run

        storage = Path(args.storage or Path("studies") / spec.name).resolve()
        checks = dry_run(spec, args, Path(args.teachers_dir or storage / "teachers").resolve())
        for line in checks.checked:
            print(f"checked: {line}")
        for line in checks.skipped:
            print(f"skipped: {line}")
        if checks.problem:
            return bad_input(checks.problem)
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
        # a resumed study keeps its MLflow store and teacher registry unless told otherwise
        args.tracking_uri = args.tracking_uri or old.get("tracking_uri")
        args.experiment = args.experiment or old.get("experiment")
        args.teachers_dir = args.teachers_dir or old.get("teachers_dir")
        args.optuna_storage = args.optuna_storage or old.get("optuna_storage")
        if old.get("spec_hash") != spec.spec_hash():
            return bad_input(
                f"--resume: {args.space} differs from the spec this study was "
                f"started with ({storage / 'spec.json'}); a space cannot change on "
                "resume"
            )
    if args.resume:
        # before anything starts: Ray's restore unpickles these files (study/integrity.py)
        from study.integrity import IntegrityError, load_key, recover_from_staging, verify

        try:
            state_key = load_key(create=False)
            for exp_dir in sorted((storage / "ray").glob("*")):
                try:
                    verify(exp_dir, state_key)
                except IntegrityError:
                    # torn by a disk that filled while Ray copied it? Ray's local copy
                    if recover_from_staging(exp_dir, state_key) is None:
                        raise
                    print(
                        f"note: {exp_dir.name}: Ray's state in the study directory was "
                        "incomplete (the disk filled while Ray copied it); restored from "
                        "Ray's local copy, which verified"
                    )
        except IntegrityError as exc:
            return bad_input(f"--resume: {exc}")
    if (args.tracking_uri or "").startswith(("http://", "https://")):
        from study.preflight import mlflow_credentials_problem

        auth_error = mlflow_credentials_problem(args.tracking_uri)
        if auth_error:  # a wrong password is not an outage: refuse before anything starts
            return bad_input(f"--tracking-uri: {auth_error}")
    # what finishes this study (an interruption, undelivered MLflow writes name it)
    args.resume_command = resume_command(argv, storage)
    STOP.install()  # Ctrl-C / SIGTERM: stop within seconds, resumable (study/interrupts.py)
    fresh = not storage.exists()  # this invocation creates the study directory
    try:
        return run_study(spec, args, storage, n_trials)
    except (StudyInterrupted, KeyboardInterrupt) as exc:
        # the cut runs are KILLED in MLflow; no leaderboard or report claims them
        code = exc.exit_code if isinstance(exc, StudyInterrupted) else 128 + signal.SIGINT
        name = signal.Signals(code - 128).name
        if marker.is_file():
            what = f"the study stopped; resume it with: {args.resume_command}"
        else:  # stopped before the study existed (e.g. training the teacher)
            what = f"nothing started; run it again with: {resume_command(argv, storage, False)}"
        print(f"\ninterrupted ({name}): {what}", file=sys.stderr)
        return code
    except StorageFault as exc:
        return _storage_stopped(exc, argv, storage)
    except ResourceUnavailable as exc:
        # refused before any trial ran: a study directory this invocation created (its
        # SQLite MLflow store and default teacher registry inside) is removed, so nothing is
        # left half-done; a remote MLflow keeps the parent run, ended FAILED (run_study)
        if fresh and not args.resume:
            shutil.rmtree(storage, ignore_errors=True)
        return bad_input(str(exc))
    except Exception as exc:
        fault = fault_behind(exc, storage)  # Ray, Optuna, SQLite or MLflow hit a full disk
        if fault is None:
            raise
        return _storage_stopped(fault, argv, storage)
    finally:
        STOP.restore()


def _storage_stopped(fault: StorageFault, argv: list[str], storage: Path) -> int:
    started = (storage / "study.json").is_file()  # else: run the same command again
    print(fault_line(fault, resume_command(argv, storage, started)), file=sys.stderr)
    return fault.exit_code


def resume_command(argv: list[str], storage: Path, resume: bool = True) -> str:
    """The command line that continues this study: the same arguments (a changed
    --num-samples/--max-epochs/--seed would be refused), its --storage, and --resume."""
    import shlex

    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("run.py") else "study/run.py"
    rest = [a for a in argv if a != "--resume"]
    if not any(a == "--storage" or a.startswith("--storage=") for a in rest):
        rest += ["--storage", str(storage)]
    return shlex.join(["python", prog, *rest, *(["--resume"] if resume else [])])


def optuna_url(args: argparse.Namespace, storage: Path) -> str:
    from study.space import OPTUNA_DB

    return str(args.optuna_storage or f"sqlite:///{storage / OPTUNA_DB}")


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

    logging.raiseExceptions = False  # a log line that cannot be written is not a traceback

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
    say(f"[1/5] teacher {typed.teacher.arch} on {dataset} (registry {teachers_dir})")
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
        from study.preflight import teacher_missing_line

        return bad_input(teacher_missing_line(typed.teacher.arch, dataset, teachers_dir))
    except (TeacherCheckpointError, FileNotFoundError, ValueError) as exc:
        from study.preflight import CHECKPOINT_FORMS

        msg = " ".join(str(exc).split())
        if typed.teacher.checkpoint:  # what a checkpoint may be
            classes = dataset_classes(dataset)
            forms = CHECKPOINT_FORMS.format(arch=typed.teacher.arch, classes=classes or "the")
            return bad_input(f"trial.teacher.checkpoint: {msg} (allowed: {forms})")
        return bad_input(f"trial.teacher: {msg}")
    acc = tc.teacher.val_top1
    say(
        f"      {'trained' if tc.teacher.trained else 'reused'} {tc.teacher.ckpt_path.name} "
        f"({'external checkpoint' if acc is None else f'val top-1 {100 * acc:.2f}%'}) "
        f"in {time.time() - t0:.1f}s"
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
            # what --resume, study/final.py and study/report.py find the study's records by
            # (no credentials: MLflow reads those from its environment variables)
            "tracking_uri": args.tracking_uri and without_userinfo(args.tracking_uri),
            "experiment": args.experiment or spec.name,
            "teachers_dir": str(teachers_dir),
            "optuna_storage": without_userinfo(optuna_url(args, storage)),
        }
        atomic_write_text(storage / "spec.json", json.dumps(spec.raw, indent=1, default=str))
        atomic_write_text(storage / "study.json", json.dumps(meta, indent=1))

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
        **{f"version.{k}": v for k, v in package_versions().items()},
        # one spelling per name in MLflow: dotted, like the trial config's keys
        **{k.replace("/", "."): v for k, v in tc.provenance().items()},
        "data.fingerprint": str(tc.teacher.meta.get("data_fingerprint", "")),
    }

    from study.describe import describe_trial

    # picklable (Ray stores the callbacks in tuner.pkl): a module function over plain data;
    # the final runs' bases join ``bases`` when the search has ended
    describe = functools.partial(describe_trial, spec, bases, provenance, str(storage))

    def plan_final(done: list[Any]) -> dict[str, dict[str, Any]]:
        """The final runs, once the search has ended (``study/final.py``)."""
        if args.skip_final:
            return {}
        from study.final import plan
        from study.leaderboard import leaderboard

        _, ranked = leaderboard(
            done, spec.objective.reported_metric, spec.objective.mode, repeats=spec.repeats
        )
        _, final_bases = plan(
            storage,
            ranked,
            bases,
            family=str(bases["search"].get("family", spec.name)),
            baselines=[] if args.skip_baselines else [b.name for b in spec.baselines],
            top_k=spec.final.top_k,
            seeds=list(spec.final.seeds),
            tuning_seed=spec.seeds[0],
        )
        return final_bases

    # -- MLflow: experiment + parent run, before any trial exists ------------------------
    from study.tracking import StudyTracker

    uri = args.tracking_uri or f"sqlite:///{storage / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        # MLflow's defaults retry a dead server for minutes per call; the tracker queues
        # writes in its outbox instead (nothing lost), so fail fast
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    experiment = args.experiment or spec.name
    tracker = StudyTracker(uri, experiment, study_id, outbox_path=str(storage / OUTBOX))
    address = ray_address(args)
    try:  # from the parent run on, no MLflow run outlives the driver RUNNING
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
                "trial_scheduler": spec.trial_scheduler.kind,
                "trial_scheduler.grace_epochs": spec.trial_scheduler.grace_epochs(spec.epochs),
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

        # -- Ray ----------------------------------------------------------------------
        say("[2/5] starting Ray" + (f": cluster at {address}" if address else " (local)"))
        summaries = run_tuners(
            spec, args, storage, bases, tracker, describe, n_trials, say, plan_final
        )
        table, ok = record_results(spec, storage, tracker, summaries, n_trials)
    except BaseException as exc:
        # whatever stopped the driver (a crash here or in Ray, Ctrl-C, SIGTERM), no MLflow
        # run stays RUNNING: the parent ends FAILED (a crash) or KILLED, its open children
        # KILLED; --resume reopens the study
        full = fault_behind(exc, storage) is not None  # a local store fails alike: be quiet
        if full:
            logging.disable(logging.CRITICAL)
        try:
            with contextlib.suppress(Exception):
                tracker.finish_study("FAILED" if isinstance(exc, Exception) else "KILLED")
        finally:
            if full:
                logging.disable(logging.NOTSET)
        raise
    print()
    print(table)
    print()
    delivered = deliver_outbox(tracker)
    from study.report import build as build_report

    try:  # the claims: final runs on the test split, paired statistics, figures, HTML
        build_report(storage, log_to_mlflow=True)
    except Exception as exc:  # a report problem never costs the study: it can be redone
        print(
            f"warning: report not written ({type(exc).__name__}: {exc}); "
            f"retry with: python study/report.py --study {storage}",
            file=sys.stderr,
        )
    from study.describe import ui_view

    has_final = any(s.role == "final" for s in summaries)
    view = ui_view(tracker.experiment_id, final=has_final, metric=spec.objective.reported_metric)
    if uri.startswith("sqlite:"):
        print(
            f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"           then open http://127.0.0.1:5000/{view}  (experiment '{experiment}')"
        )
    else:
        print(f"MLflow UI: {uri.rstrip('/')}/{view}  (experiment '{experiment}')")
    print(f"study directory: {storage}")
    if not delivered:  # never a success with records missing from MLflow
        print(
            f"error: MLflow at {without_userinfo(tracker.tracking_uri)} unreachable: "
            f"{tracker.pending_operations()} write(s) of this study wait in {storage / OUTBOX}; "
            f"when it is back, deliver them with: {args.resume_command}",
            file=sys.stderr,
        )
        return EXIT_FAIL
    return EXIT_OK if ok else EXIT_FAIL


def deliver_outbox(tracker: Any) -> bool:
    """Land the writes queued during an MLflow outage, retrying for up to
    ``$KDSTUDY_MLFLOW_WAIT_S`` seconds (default 60); True when none is left."""
    if tracker.flush_outbox():
        return True
    wait_s = float(os.environ.get(MLFLOW_WAIT_ENV) or 60.0)
    print(
        f"MLflow unreachable: {tracker.pending_operations()} write(s) queued; retrying for up "
        f"to {wait_s:g} s (${MLFLOW_WAIT_ENV})",
        file=sys.stderr,
    )
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(5.0, left))
        if tracker.flush_outbox():
            print("MLflow reachable again: every write delivered", file=sys.stderr)
            return True
    return False


def record_results(
    spec: StudySpec, storage: Path, tracker: Any, summaries: list[Any], n_trials: int
) -> tuple[str, bool]:
    """The leaderboard files and the parent run's summary; ends the parent run. Returns the
    leaderboard text and whether the search produced a result."""
    from study.leaderboard import leaderboard

    table, summary = leaderboard(
        summaries, spec.objective.reported_metric, spec.objective.mode, repeats=spec.repeats
    )
    atomic_write_text(storage / "leaderboard.txt", table + "\n")
    atomic_write_text(storage / "leaderboard.json", json.dumps(summary, indent=1, default=str))
    # every trial of every phase, for the report (study/report.py)
    atomic_write_text(
        storage / "trials.json",
        json.dumps([s.to_dict() for s in summaries], indent=1, default=str),
    )
    best = summary["searched"][0] if summary["searched"] else None
    ok = best is not None or n_trials == 0
    # tuning numbers (validation split); the final ones are logged by the report
    metrics = {"tuning/best": best["value"]} if best and best["value"] is not None else {}
    for name, info in summary["baselines"].items():
        if info["n"]:
            metrics[f"tuning/{name}"] = info["mean"]
    tracker.finish_study(
        "FINISHED" if ok else "FAILED",
        metrics=metrics,
        tags={"best_trial": best["trial_id"], "best_config_group": best["config_group"]}
        if best
        else None,
        texts={"leaderboard.txt": table},
        known_trials=[s.trial_id for s in summaries],
    )
    return table, ok


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


if __name__ == "__main__":
    sys.exit(main())
