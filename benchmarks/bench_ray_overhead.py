"""Ray Tune overhead: the same trials through ``tune.Tuner`` vs in-process, 2 at a time.

Issue: "the same N trials (about 30 s of training each) through the Tuner vs run
in-process at the same parallelism; target <= 1.10x. Also report the fixed cost per
trial in seconds and what the quickstart does about it for its short trials."

One run measures, on CPU with 1 intra-op thread per trial (a trial with ``cpu: 1``):

(1) in-process reference: N trials of ``trainables.loop.run_training`` — digits, the
    quickstart's teacher (cnn_large) and WKL loss (CE + WKD-L + DKD with the published
    hand-off, ``search_spaces/quickstart.yaml``) and the design card's student
    (``--student``, default resnet8x4: epochs of ~1.3 s, so a 30 s trial has ~20
    epochs, as a real study's trials have tens to hundreds of epochs of seconds to
    minutes; ``--student cnn_small`` gives 0.15 s epochs, ~190 reports per trial, a
    stress case of the per-report cost), the teacher and CKA cost trained/built once
    by ``study.teacher.ensure_teacher_and_cost`` into a registry — in a spawn
    ``ProcessPoolExecutor`` of 2 workers (each ``torch.set_num_threads(1)``). The
    in-process wall includes starting the two workers (spawn, import torch and the
    loop), as Ray's wall includes starting its worker actors; the pool's start time
    is printed and the ratio against a warm pool is printed too. Trial outputs
    (best/last weights, eval logits) are written as the product writes them. Epochs
    are calibrated so one trial takes ~``--trial-seconds`` (default 30): a 3-epoch
    calibration trial gives the set-up time and the epoch time. A second in-process
    pass also ``torch.save``-s the full resume state every epoch as the trainable
    does, to separate serialisation from Ray's own cost.
(2) the same N trials (same configs and seeds) through ``ray.tune.Tuner`` with the
    project's trainable ``trainable_with_resources(bases, cpu=1, gpu=0)``, config
    ``{"base": tune.grid_search(names)}``, ``max_concurrent_trials=2``, a local
    ``ray.init(num_cpus=2)`` (``RAY_AUTH_MODE=disabled``), one report + checkpoint per
    epoch, ``num_to_keep=2`` and ``reuse_actors=True`` as ``study/run.py`` runs an
    ASHA study. Wall time is ``Tuner.fit()`` only; ``ray.init`` is timed separately.
    The MLflow/progress callbacks are left out: they are the product's tracking, not
    Ray's overhead.
(3) fixed cost per trial: M trials of a trivial function trainable (one report) and M
    trials of the project trainable with 1 epoch on 50 digits images, each through the
    Tuner with ``reuse_actors`` False (Ray's default) and True (the product), vs the
    same work in-process (warm pool). Reported as seconds added per trial: per slot (a
    trial's latency at 2 concurrent, ``delta / (M / 2)``) and per study (``delta / M``,
    what a study of M trials pays in wall time per trial).

The in-process and Ray passes of (1) and (2) alternate ``--repeats`` times (default 2)
with the pool kept warm in between, and the ratio is over all passes: this machine's
speed drifts by 10-20 % between minutes (the same Ray pass measured 26.7 s and 34.0 s
of training per trial in two runs), and alternating puts both sides under the same drift.

The machine may be shared: the 1-minute load average is printed at each phase; a
load well above 2 (the CPUs used here) inflates whichever phase it overlaps.

Run: ``.venv/bin/python benchmarks/bench_ray_overhead.py [--n 4] [--trial-seconds 30]
[--m 8] [--student resnet8x4] [--repeats 2] [--quick]``. Target: Ray wall / in-process wall (both
including their worker start) <= 1.10.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# Run as a script (`python benchmarks/bench_ray_overhead.py`): make the repo root importable.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONCURRENCY = 2  # the quickstart's `concurrency: 2` on a 2-core machine
TARGET = 1.10  # the bound on Ray wall / in-process wall
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TINY_PER_CLASS = 5  # 50 digits images (45 train, 5 val): a trial whose training is negligible


# -- in-process workers (top level: picklable for the spawn pool) ----------------------------
_READY_AT = 0.0  # time.time() when this worker finished its initializer


def _pool_init() -> None:
    """One intra-op thread per worker, as Ray gives a ``cpu: 1`` trial (platform.md); the
    imports a trial needs are paid here, as a Ray worker actor pays them when it starts."""
    global _READY_AT
    import torch

    import trainables.loop  # noqa: F401

    torch.set_num_threads(1)
    _READY_AT = time.time()


def _warm(delay: float) -> tuple[int, float]:
    """Keep a worker busy ``delay`` seconds so every pool process gets started; its pid and
    the time its initializer finished."""
    time.sleep(delay)
    return os.getpid(), _READY_AT


def _inproc_trial(base: dict[str, Any], trial_dir: str, save_state: bool) -> dict[str, Any]:
    """Run one trial with ``run_training`` in this process; timings and last metrics.

    ``save_state`` serialises the resume state each epoch exactly as
    ``trainables.trainable.train_trial`` does before ``tune.report`` (temp dir +
    ``torch.save``), without any Ray.
    """
    import torch

    from trainables.config import TrialConfig
    from trainables.loop import run_training
    from trainables.trainable import STATE_FILE

    cfg = TrialConfig.from_dict(base)
    epoch_s: list[float] = []
    last: dict[str, float] = {}

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        epoch_s.append(metrics["time/epoch_s"])
        last.update(metrics)
        if save_state:
            tmp = tempfile.mkdtemp(prefix="kdckpt_")
            try:
                torch.save(state, Path(tmp) / STATE_FILE)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    t0 = time.perf_counter()
    run_training(cfg, report, trial_dir=trial_dir)
    wall = time.perf_counter() - t0
    return {"wall": wall, "epoch_s": epoch_s, "top1": last.get("val/top1", float("nan"))}


def _trivial_inproc() -> float:
    """The in-process counterpart of the trivial trainable: one metrics dict."""
    t0 = time.perf_counter()
    _ = {"done": 1.0}
    return time.perf_counter() - t0


def _trivial_trainable(config: dict[str, Any]) -> None:
    """A function trainable that reports once: what remains is Ray's per-trial cost."""
    from ray import tune

    tune.report({"done": 1.0})


# -- set-up -----------------------------------------------------------------------------------
def resolved_trial(teachers_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The quickstart's trial config, with teacher checkpoint and cost path resolved on
    the driver as ``study/run.py`` does (absolute paths; trials never recompute)."""
    from study.spec import load_spec
    from study.teacher import ensure_teacher_and_cost

    spec = load_spec(str(QUICKSTART), {})
    trial = dict(spec.trial)
    tc = ensure_teacher_and_cost(
        "digits",
        trial["teacher"]["arch"],
        teachers_dir=teachers_dir,
        allow_train=True,  # digits is embedded: the registry trains it in seconds
        cost_kind="cka",
    )
    assert tc.cost is not None
    trial["teacher"] = {**trial["teacher"], "checkpoint": str(tc.teacher.ckpt_path)}
    trial["cost"] = {**trial["cost"], "path": str(tc.cost.path), "sha256": tc.cost.sha256}
    trial["output"] = {"dir": str(out_dir)}
    trial["device"] = "cpu"  # the comparison is about CPU trials with 1 thread each
    return trial


def make_bases(
    trial: dict[str, Any], n: int, epochs: int, max_per_class: int | None = None
) -> dict[str, dict[str, Any]]:
    """``n`` trial configs differing by seed (``t0``..), as ``study/run.py``'s bases."""
    from trainables.config import with_overrides

    bases = {}
    for i in range(n):
        over: dict[str, Any] = {"epochs": epochs, "seed": i}
        if max_per_class is not None:
            over["data.max_per_class"] = max_per_class
        bases[f"t{i}"] = with_overrides(trial, over)
    return bases


class CpuSampler:
    """CPU seconds of the driver, Ray's trial workers and Ray's own processes during a phase.

    A thread reads ``/proc/<pid>/stat`` (utime + stime) every ``period`` seconds for this
    process and every process whose command line mentions ray, keeping the last value of
    each pid (a process that exits between two samples loses at most one period). A pid
    ever seen titled ``ray::ImplicitFunc`` is a trial worker (its CPU is the training);
    the driver is this process; the rest (GCS, raylet, log monitor, idle workers) is
    Ray's system. Linux only; elsewhere every number is NaN.
    """

    def __init__(self, period: float = 0.5) -> None:
        import threading

        self._period = period
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._trial_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        if not os.path.isdir("/proc"):
            return out
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
                if pid != os.getpid() and "ray" not in cmd:
                    continue
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out[pid] = (cmd, (int(fields[11]) + int(fields[12])) / self._tick)
            except (OSError, IndexError, ValueError):
                continue
        return out

    def _record(self, first: bool) -> None:
        for pid, (cmd, cpu) in self._sample().items():
            if first:
                self._start[pid] = cpu
            self._last[pid] = cpu
            if "ImplicitFunc" in cmd:
                self._trial_pids.add(pid)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._record(first=False)

    def __enter__(self) -> CpuSampler:
        self._record(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record(first=False)

    def seconds(self) -> dict[str, float]:
        """CPU seconds used during the phase: driver, trial workers, Ray system."""
        if not self._last:
            return {"driver": math.nan, "trials": math.nan, "system": math.nan}
        used = {pid: cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items()}
        me = os.getpid()
        trials = sum(v for pid, v in used.items() if pid in self._trial_pids)
        system = sum(v for pid, v in used.items() if pid not in self._trial_pids and pid != me)
        return {"driver": used.get(me, 0.0), "trials": trials, "system": system}


def load1() -> float:
    """1-minute load average (other helpers may share the CPUs)."""
    return os.getloadavg()[0]


# -- phases -----------------------------------------------------------------------------------
def run_pool(
    pool: ProcessPoolExecutor, bases: dict[str, dict[str, Any]], out: Path, save_state: bool
) -> tuple[float, list[dict[str, Any]]]:
    """All trials of ``bases`` on the pool (2 at a time); wall seconds and per-trial results."""
    t0 = time.perf_counter()
    futs = [pool.submit(_inproc_trial, b, str(out / name), save_state) for name, b in bases.items()]
    res = [f.result() for f in futs]
    return time.perf_counter() - t0, res


def run_tuner(
    trainable: Any, names: list[str], storage: Path, exp: str, reuse: bool
) -> tuple[float, list[Any]]:
    """``Tuner.fit()`` over a grid of ``names``, 2 at a time; wall seconds and results.

    Mirrors ``study/run.py``'s ``run_tuners`` (trial names = ids, verbose 0, 2 checkpoints
    kept, Ray's JSON result logger only) without its MLflow and progress callbacks."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    tuner = tune.Tuner(
        trainable,
        param_space={"base": tune.grid_search(names)},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=CONCURRENCY,
            reuse_actors=reuse,
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=exp,
            storage_path=str(storage),
            verbose=0,
            callbacks=[JsonLoggerCallback()],  # study/run.py's only Ray logger
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    results = list(grid)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{exp}: {len(errors)} trial(s) failed: {errors[0]}")
    return wall, results


def per_trial_overhead(delta: float, m: int) -> tuple[float, float]:
    """Seconds added per trial: per slot (latency at CONCURRENCY) and per study trial."""
    return delta / (m / CONCURRENCY), delta / m


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Measure and print the table (see the module docstring for each number's meaning)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4, help="trials of the main comparison (4)")
    p.add_argument("--trial-seconds", type=float, default=30.0, help="target trial length (30)")
    p.add_argument("--m", type=int, default=8, help="trials of the fixed-cost probe (8)")
    p.add_argument("--student", default="resnet8x4", help="student arch (resnet8x4)")
    p.add_argument("--repeats", type=int, default=2, help="alternating passes (2)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny trials")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    p.add_argument(
        "--teachers-dir",
        help="teacher registry to reuse (default: a fresh one in the temp directory)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.trial_seconds, args.m, args.repeats = 2, 2.0, 4, 1
    if args.n < 1 or args.m < CONCURRENCY or args.trial_seconds <= 0:
        p.error("need --n >= 1, --m >= 2, --trial-seconds > 0")

    # the same settings study/run.py gives Ray (set before Ray starts its processes)
    # token auth on, as study/run.py runs a private local Ray (secure_ray_env)
    if os.environ.setdefault("RAY_AUTH_MODE", "token") == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # + JsonLoggerCallback
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    work = Path(tempfile.mkdtemp(prefix="bench_ray_overhead_"))
    loads: dict[str, float] = {"start": load1()}
    try:
        t0 = time.perf_counter()
        teachers = Path(args.teachers_dir).resolve() if args.teachers_dir else work / "teachers"
        trial = resolved_trial(teachers, work / "trials")
        trial["student"] = {**trial["student"], "arch": args.student}
        teacher_s = time.perf_counter() - t0
        print(f"teacher + cost matrix (once, driver): {teacher_s:.1f} s", flush=True)

        ctx = mp.get_context("spawn")
        t_pool = time.time()
        with ProcessPoolExecutor(CONCURRENCY, mp_context=ctx, initializer=_pool_init) as pool:
            # both workers up: importing torch can take longer than a warm-up task on a busy
            # machine, so repeat until two pids answered; the start time is the later
            # worker's end of initializer
            ready: dict[int, float] = {}
            for _ in range(30):
                ready.update(f.result() for f in [pool.submit(_warm, 2.0) for _ in range(2)])
                if len(ready) >= CONCURRENCY:
                    break
            assert len(ready) >= CONCURRENCY, "the pool did not start both workers"
            pool_start = max(ready.values()) - t_pool
            # calibration: 3 epochs; the first may carry one-off costs, so take the median
            cal = pool.submit(
                _inproc_trial, make_bases(trial, 1, 3)["t0"], str(work / "cal"), False
            ).result()
            epoch_s = statistics.median(cal["epoch_s"])
            setup_s = cal["wall"] - sum(cal["epoch_s"])
            epochs = max(1, round((args.trial_seconds - setup_s) / epoch_s))
            print(
                f"calibration (1 thread): epoch {epoch_s:.3f} s, set-up {setup_s:.2f} s "
                f"-> {epochs} epochs per trial (~{setup_s + epochs * epoch_s:.1f} s)",
                flush=True,
            )
            bases = make_bases(trial, args.n, epochs)
            loads["inproc+save"] = load1()
            w_sv, _ = run_pool(pool, bases, work / "inproc_save", save_state=True)
            print(f"in-process + state save: {w_sv:.1f} s", flush=True)
            tiny = make_bases(trial, args.m, 1, max_per_class=TINY_PER_CLASS)
            w_tiny_in, _ = run_pool(pool, tiny, work / "tiny", save_state=False)
            t1 = time.perf_counter()
            for _ in range(args.m):
                pool.submit(_trivial_inproc).result()
            w_triv_in = time.perf_counter() - t1

            import ray
            from ray import tune

            from trainables.trainable import trainable_with_resources

            loads["ray"] = load1()
            t0 = time.perf_counter()
            ray.init(
                num_cpus=CONCURRENCY,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            ray_init_s = time.perf_counter() - t0
            storage = work / "ray"
            try:
                # In-process and Ray passes alternate (the pool's workers idle, warm, while
                # Ray runs): a drift of the machine's speed hits both sides alike.
                w_in_r: list[float] = []
                w_ray_r: list[float] = []
                r_in: list[dict[str, Any]] = []
                r_ray: list[Any] = []
                cpu = {"trials": 0.0, "driver": 0.0, "system": 0.0}
                for rep in range(args.repeats):
                    w, res = run_pool(pool, bases, work / f"inproc{rep}", save_state=False)
                    w_in_r.append(w)
                    r_in += res
                    with CpuSampler() as sampler:
                        w, res = run_tuner(
                            trainable_with_resources(bases, cpu=1, gpu=0),
                            sorted(bases),
                            storage,
                            f"main{rep}",
                            reuse=True,
                        )
                    w_ray_r.append(w)
                    r_ray += res
                    for k, v in sampler.seconds().items():
                        cpu[k] += v
                    print(
                        f"pass {rep + 1}/{args.repeats}: in-process {w_in_r[-1]:.1f} s, "
                        f"Ray Tuner.fit {w_ray_r[-1]:.1f} s",
                        flush=True,
                    )
                loads["fixed"] = load1()
                triv = tune.with_resources(_trivial_trainable, {"cpu": 1, "gpu": 0})
                fixed: dict[tuple[str, bool], float] = {}
                for reuse in (False, True):
                    w, _ = run_tuner(
                        triv, [f"x{i}" for i in range(args.m)], storage, f"trivial_{reuse}", reuse
                    )
                    fixed[("trivial", reuse)] = w - w_triv_in
                    w, _ = run_tuner(
                        trainable_with_resources(tiny, cpu=1, gpu=0),
                        sorted(tiny),
                        storage,
                        f"tiny_{reuse}",
                        reuse,
                    )
                    fixed[("1-epoch", reuse)] = w - w_tiny_in
            finally:
                ray.shutdown()
        loads["end"] = load1()

        # trial-internal times: pure training (sum of epochs) and whole trial function
        train_in = statistics.mean(sum(r["epoch_s"]) for r in r_in)
        wall_in = statistics.mean(r["wall"] for r in r_in)
        train_ray, total_ray, done = [], [], []
        for r in r_ray:
            df = r.metrics_dataframe
            train_ray.append(float(df["time/epoch_s"].sum()))
            total_ray.append(float(df["time_total_s"].iloc[-1]))
            done.append(int(r.metrics["training_iteration"]))
        assert all(d == epochs for d in done), f"Ray trials ran {done} epochs, not {epochs}"
        top1_in = sorted(round(r["top1"], 2) for r in r_in[: args.n])
        top1_ray = sorted(round(r.metrics["val/top1"], 2) for r in r_ray[: args.n])

        w_in, w_ray = statistics.fmean(w_in_r), statistics.fmean(w_ray_r)
        ratios = [wr / (pool_start + wi) for wr, wi in zip(w_ray_r, w_in_r, strict=True)]
        ratio = sum(w_ray_r) / sum(pool_start + wi for wi in w_in_r)
        ratio_warm = sum(w_ray_r) / sum(w_in_r)
        waves = math.ceil(args.n / CONCURRENCY)
        slot_delta = (w_ray - pool_start - w_in) / waves
        # per-epoch cost inside the trial function beyond training (outputs, report and
        # checkpoint), Ray minus in-process: what Ray adds to every epoch
        out_in = wall_in - train_in
        out_ray = statistics.mean(t - s for t, s in zip(total_ray, train_ray, strict=True))
        per_report = (out_ray - out_in) / epochs
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        rows = [
            (f"trials x epochs of {args.student} (2 at a time, 1 thread each)",
             f"{args.n} x {epochs}"),
            ("epoch time, calibration (s)", f"{epoch_s:.3f}"),
            ("in-process worker start: spawn 2 + imports (s)", f"{pool_start:.1f}"),
            ("passes (in-process and Ray alternate)", f"{args.repeats}"),
            ("wall in-process, warm workers, per pass (s)", " ".join(f"{w:.1f}" for w in w_in_r)),
            ("wall in-process + per-epoch state save, warm (s)", f"{w_sv:.1f}"),
            ("wall Ray Tuner.fit, reuse_actors=True, per pass (s)",
             " ".join(f"{w:.1f}" for w in w_ray_r)),
            ("ratio per pass, Ray / in-process incl. start", " ".join(f"{r:.3f}" for r in ratios)),
            (f"ratio all passes, Ray / in-process incl. start (target <= {TARGET:.2f})",
             f"{ratio:.3f}  {verdict}"),
            ("ratio Ray / in-process, warm workers", f"{ratio_warm:.3f}"),
            ("Ray init (s)", f"{ray_init_s:.1f}"),
            ("mean training per trial, sum of epochs: in-proc / Ray (s)",
             f"{train_in:.1f} / {statistics.mean(train_ray):.1f}"),
            ("mean trial function time: in-proc wall / Ray time_total_s (s)",
             f"{wall_in:.1f} / {statistics.mean(total_ray):.1f}"),
            ("Ray extra per trial slot (s)", f"{slot_delta:.2f}"),
            ("Ray report + checkpoint, inside the trial (ms/epoch)", f"{1000 * per_report:.0f}"),
            ("CPU s during Tuner.fit: trial workers / driver / Ray system",
             f"{cpu['trials']:.1f} / {cpu['driver']:.1f} / {cpu['system']:.1f}"),
            ("  driver + Ray system, share of the 2 CPUs over the fit",
             f"{(cpu['driver'] + cpu['system']) / (CONCURRENCY * sum(w_ray_r)):.1%}"),
        ]  # fmt: skip
        for kind in ("trivial", "1-epoch"):
            for reuse in (False, True):
                slot, study = per_trial_overhead(fixed[(kind, reuse)], args.m)
                rows.append(
                    (
                        f"fixed cost/trial, {kind}, reuse_actors={reuse}: slot / study (s)",
                        f"{slot:.2f} / {study:.2f}",
                    )
                )
        rows.append(("final val top-1 in-proc (sorted)", " ".join(map(str, top1_in))))
        rows.append(("final val top-1 Ray (sorted)", " ".join(map(str, top1_ray))))
        at = "/".join(loads)
        rows.append((f"load average 1-min at {at}", "/".join(f"{v:.2f}" for v in loads.values())))
        width = max(len(k) for k, _ in rows)
        print()
        print(f"Ray Tune overhead (M = {args.m} fixed-cost trials, {os.cpu_count()} CPUs)")
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        busy = max(loads.values()) > CONCURRENCY + 0.5
        if busy:
            print(
                f"note: load average above {CONCURRENCY + 0.5:g} during the run: other "
                "processes shared the CPUs, so the wall times (and the ratio) are distorted"
            )
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
