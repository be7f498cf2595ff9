"""The driver's MLflow callback path: milliseconds per result, synchronous vs background delivery.

Issue: "The driver keeps up: MLflow logging blocks Ray's event loop ~0.5 s per result (Ray
warns 'may be a performance bottleneck'); target <= 20 ms per result."

One run drives a real :class:`study.tracking.StudyTracker` behind the real Ray callback
(``study.callbacks.MLflowStudyCallback``, fake trial objects; no Ray cluster) on a real SQLite
MLflow store in a temporary directory -- and with ``--server`` also through a real
``mlflow server`` on 127.0.0.1 -- with a file outbox as the driver has. ``--trials`` trials x
``--epochs`` epochs of result dicts shaped like the loop's reports (``--metrics`` numeric
metrics, default 40, plus Ray's bookkeeping entries and ``config/*``), epoch-major as Ray
delivers them. Timed: the wall time of each ``on_trial_result`` call (what blocks Ray's event
loop), for

* ``sync``: every write applied in the callback (the old path, ``delivery="sync"``);
* ``background``: the record is appended and fsynced to the outbox and a delivery thread
  applies it (``delivery="background"``, ``outbox_fsync="append"``);
* ``background+deferred-fsync``: the same, the outbox line fsynced by the delivery thread
  (``outbox_fsync="delivery"``): no disk flush on the event loop at all (the driver's
  default).

With ``--pace-ms`` > 0 the results are spaced like a study's (epochs take seconds; default
0 = back to back, the worst case for the background path: its thread competes for the GIL).
After the loop the background tracker's ``flush_outbox`` (drain) time is printed too, and
every mode is checked to have landed every result exactly once.

The sync pass also times every ``MlflowClient`` method the tracker calls (calls and ms per
result), which is where the time of the old path goes.

Run: ``.venv/bin/python benchmarks/bench_driver.py [--trials 4] [--epochs 25] [--metrics 40]
[--server] [--pace-ms 0]``. Target: background p95 <= 20 ms per result.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 1 intra-op thread, as a trial with cpu: 1

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402

from study.callbacks import MLflowStudyCallback  # noqa: E402
from study.tracking import STEP_KEY, StudyTracker  # noqa: E402
from tests.mlflow_server import MlflowServer  # noqa: E402

MODES = ("sync", "background", "background+deferred-fsync")


class FakeTrial:
    """What the callback reads of a Ray trial."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id = trial_id
        self.config = config
        self.last_result: dict[str, Any] = {}
        self.status = "RUNNING"


def describe(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    return f"lr={config['lr']:.3g}", config, {"role": "trial"}


def result_dict(trial: FakeTrial, epoch: int, n_metrics: int, rng: random.Random) -> dict[str, Any]:
    """A result as the loop reports it (metric names like the loop's) plus Ray's entries."""
    result: dict[str, Any] = {}
    for i in range(n_metrics):
        split = ("train", "val", "test")[i % 3]
        result[f"{split}/metric_{i:02d}"] = rng.random()
    result.update(
        {
            STEP_KEY: epoch,
            "time_this_iter_s": 1.0 + rng.random(),
            "time_total_s": float(epoch),
            "time_since_restore": float(epoch),
            "iterations_since_restore": epoch,
            "done": False,
            "should_checkpoint": True,
            "trial_id": trial.trial_id,
            "pid": 1234,
            "hostname": "bench",
            "date": "2026-12-02_00-00-00",
            "timestamp": int(time.time()),
            "config/lr": trial.config["lr"],
            "config/epochs": trial.config["epochs"],
        }
    )
    return result


@contextmanager
def client_timer(client: MlflowClient) -> Iterator[dict[str, list[float]]]:
    """Times every public method of ``client`` (this instance only) while active."""
    times: dict[str, list[float]] = defaultdict(list)
    originals: dict[str, Callable[..., Any]] = {}
    for name in dir(client):
        if name.startswith("_"):
            continue
        method = getattr(client, name)
        if not callable(method):
            continue

        def timed(*args: Any, __m: Callable[..., Any] = method, __n: str = name, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return __m(*args, **kw)
            finally:
                times[__n].append(time.perf_counter() - start)

        originals[name] = method
        setattr(client, name, timed)
    try:
        yield times
    finally:
        for name in originals:
            delattr(client, name)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_mode(
    mode: str, uri: str, workdir: Path, args: argparse.Namespace
) -> tuple[list[float], float, dict[str, list[float]] | None, str]:
    experiment = f"bench-{mode}-{os.getpid()}-{time.time_ns()}"
    tracker = StudyTracker(
        uri,
        experiment,
        f"study-{mode}",
        outbox_path=str(workdir / f"outbox-{mode}.jsonl"),
        delivery=mode.split("+")[0],
        outbox_fsync="delivery" if mode.endswith("deferred-fsync") else "append",
    )
    tracker.open_study(run_name=mode, params={"mode": mode}, tags={}, texts={})
    callback = MLflowStudyCallback(tracker, describe, max_iterations=args.epochs)
    rng = random.Random(0)
    trials = [
        FakeTrial(f"t{i:03d}", {"lr": 10 ** rng.uniform(-4, -1), "epochs": args.epochs})
        for i in range(args.trials)
    ]
    for trial in trials:
        callback.on_trial_start(0, trials, trial)
    ops_client = tracker._ops._client  # noqa: SLF001 (benchmark instrumentation)
    per_result: list[float] = []
    appends: list[float] = []
    outbox = tracker._outbox  # noqa: SLF001
    plain_append = outbox.append

    def timed_append(record: dict[str, Any]) -> None:
        start = time.perf_counter()
        try:
            plain_append(record)
        finally:
            appends.append(time.perf_counter() - start)

    outbox.append = timed_append  # type: ignore[method-assign]
    timer = client_timer(ops_client) if mode == "sync" else None
    times = timer.__enter__() if timer is not None else None
    try:
        for epoch in range(1, args.epochs + 1):
            for trial in trials:
                result = result_dict(trial, epoch, args.metrics, rng)
                start = time.perf_counter()
                callback.on_trial_result(epoch, trials, trial, result)
                per_result.append(time.perf_counter() - start)
                trial.last_result = result
                if args.pace_ms > 0:
                    time.sleep(args.pace_ms / 1000)
    finally:
        if timer is not None:
            timer.__exit__(None, None, None)
    outbox.append = plain_append  # type: ignore[method-assign]
    if appends:
        ms = [1000 * t for t in appends]
        print(
            f"  {mode}: outbox.append ms p50 {percentile(ms, 0.5):.2f} "
            f"p95 {percentile(ms, 0.95):.2f} max {max(ms):.2f} over {len(ms)} appends"
        )
    start = time.perf_counter()
    assert tracker.flush_outbox(), "outbox not delivered"
    drain = time.perf_counter() - start
    with redirect_stdout(io.StringIO()):  # MLflow prints a "View run" line per closed run
        for trial in trials:
            callback.on_trial_complete(args.epochs, trials, trial)
        tracker.finish_study("FINISHED")
        tracker.close()
    # every result landed exactly once
    check = MlflowClient(uri)
    exp = check.get_experiment_by_name(experiment)
    assert exp is not None
    runs = check.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)
    assert len(runs) == args.trials, len(runs)
    for run in runs:
        steps = [m.step for m in check.get_metric_history(run.info.run_id, STEP_KEY)]
        assert sorted(steps) == list(range(1, args.epochs + 1)), steps
        assert run.info.status == "FINISHED"
    return per_result, drain, times, experiment


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    server = MlflowServer(
        workdir / "server.db", workdir / "server-artifacts", workdir / "server.log"
    )
    try:
        server.start()
        yield server.uri
    finally:
        server.stop()


def report(store: str, results: dict[str, tuple[list[float], float, Any, str]]) -> None:
    print(f"\n== {store}: ms per on_trial_result (the time Ray's event loop is blocked)")
    print(f"{'mode':<28}{'n':>6}{'p50':>10}{'p95':>10}{'max':>10}{'mean':>10}{'drain s':>10}")
    stats: dict[str, dict[str, float]] = {}
    for mode, (per, drain, _, _) in results.items():
        ms = [t * 1000 for t in per]
        stats[mode] = {
            "p50": percentile(ms, 0.50),
            "p95": percentile(ms, 0.95),
            "max": max(ms),
            "mean": statistics.fmean(ms),
        }
        s = stats[mode]
        print(
            f"{mode:<28}{len(ms):>6}{s['p50']:>10.2f}{s['p95']:>10.2f}{s['max']:>10.2f}"
            f"{s['mean']:>10.2f}{drain:>10.2f}"
        )
    old = stats["sync"]
    for mode in MODES[1:]:
        new = stats[mode]
        print(
            f"ratio sync/{mode}: "
            + "  ".join(f"{k} {old[k] / new[k]:.1f}x" for k in ("p50", "p95", "max", "mean"))
            + f"  -- p95 {new['p95']:.2f} ms "
            + ("meets" if new["p95"] <= 20 else "MISSES")
            + " the 20 ms target"
        )
    times = results.get("sync", (None, None, None, None))[2]
    if times:
        n = len(results["sync"][0])
        print(f"-- sync path, MlflowClient calls during the result loop ({n} results):")
        print(f"{'method':<26}{'calls':>8}{'ms/call':>10}{'ms/result':>11}")
        for name, ts in sorted(times.items(), key=lambda kv: -sum(kv[1])):
            print(
                f"{name:<26}{len(ts):>8}{1000 * statistics.fmean(ts):>10.2f}"
                f"{1000 * sum(ts) / n:>11.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--metrics", type=int, default=40)
    parser.add_argument("--pace-ms", type=float, default=0.0)
    parser.add_argument("--server", action="store_true", help="also through mlflow server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.metrics} metrics/result, "
        f"pace {args.pace_ms} ms, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        workdir = Path(tmp)
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        stores: dict[str, str] = {"sqlite": uri}
        with mlflow_server(workdir) if args.server else _no_server() as url:
            if url:
                stores["server"] = url
            for store, target in stores.items():
                results = {mode: run_mode(mode, target, workdir, args) for mode in MODES}
                report(store, results)


@contextmanager
def _no_server() -> Iterator[str]:
    yield ""


if __name__ == "__main__":
    main()
