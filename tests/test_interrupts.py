"""Faults injected for real into a running study: Ctrl-C (SIGINT) and SIGTERM to the driver,
and an MLflow server that dies and stays down until the study ends.

The promises (study/interrupts.py, study/run.py): an interrupted study stops within
seconds, says so in one line with the command that resumes it, exits 130 (SIGINT) or
143 (SIGTERM), starts no further phase, leaves no MLflow run RUNNING or FINISHED that was
cut short, and ``--resume`` completes it with one run per trial. A study whose MLflow writes
cannot be delivered does not claim success: it retries for ``$KDSTUDY_MLFLOW_WAIT_S``, exits 1
naming the command that delivers them, and that command does.

The teacher registry is shared by the tests of this module (the first study trains the
digits teacher, minutes on a busy 2-core machine); ``$KDSTUDY_TEST_TEACHERS`` names an
existing registry to reuse instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from study.interrupts import TUNE_SIGINT_ENV, StopSignals, StudyInterrupted
from tests.conftest import shared_teachers
from tests.mlflow_server import MlflowServer
from tests.test_study_e2e import ENV, REPO, RUN, check_structure, runs_of

SPACE = str(REPO / "search_spaces" / "quickstart.yaml")
#: a short search alone: 3 trials of 6 epochs, no baselines, no final runs
SEARCH_ONLY = ("--num-samples", "3", "--max-epochs", "6", "--skip-baselines", "--skip-final")
#: the first study of the module may train the teacher first
FIRST_PHASE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def teachers() -> Path:
    return shared_teachers()


def study_cmd(storage: Path, teachers: Path) -> list[str]:
    return [*RUN, "--space", SPACE, "--storage", str(storage), "--teachers-dir", str(teachers)]


def start(cmd: list[str], cwd: Path, stderr: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        start_new_session=True,  # the test's signal goes to the driver alone
    )


def wait_for_line(proc: subprocess.Popen, pred: object, seen: list[str]) -> None:
    """Read the driver's stdout until a line satisfies ``pred`` (fail if it ends first)."""
    assert proc.stdout is not None
    deadline = time.time() + FIRST_PHASE_TIMEOUT_S
    for line in proc.stdout:
        seen.append(line)
        if pred(line):  # type: ignore[operator]
            return
        assert time.time() < deadline, "".join(seen)
    pytest.fail("the study ended before the expected line:\n" + "".join(seen))


def stop_with(proc: subprocess.Popen, sig: int, seen: list[str]) -> float:
    """Send ``sig`` to the driver; seconds until it exited (its stdout drained)."""
    t0 = time.time()
    os.kill(proc.pid, sig)
    assert proc.stdout is not None
    seen.extend(proc.stdout)
    proc.wait(timeout=60)
    return time.time() - t0


def interrupted_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if "interrupted" in x.lower()]
    assert len(lines) == 1, stderr
    return lines[0]


def run_named_command(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the command a message names (after ``with: ``), as the user would."""
    cmd = shlex.split(line.split("with: ", 1)[1])
    assert cmd[:2] == ["python", str(REPO / "study" / "run.py")] and cmd[-1] == "--resume"
    return subprocess.run(
        [sys.executable, *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def running_line(phase: str):  # noqa: ANN201
    return lambda line: line.lstrip().startswith(f"[{phase} ") and "running:" in line


def fault_during_search(
    proc: subprocess.Popen, inject: Callable[[], object], seen: list[str], timeout: float
) -> float:
    """Once a trial of the search runs, ``inject`` a fault; seconds until the driver exited
    (its stdout drained into ``seen``; the driver is killed if it outlives ``timeout``)."""
    try:
        wait_for_line(proc, running_line("search"), seen)
        inject()
        t0 = time.time()
        assert proc.stdout is not None
        seen.extend(proc.stdout)
        proc.wait(timeout=timeout)
        return time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_first_signal_in_a_tune_run_goes_to_tune_a_second_one_stops_at_once() -> None:
    """The handler's logic without Ray: ``tune_run`` stands for ``fit()``, the lambda for
    the handler ``tune.run`` installs on SIGUSR1."""
    stop = StopSignals()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    env_before = os.environ.get(TUNE_SIGINT_ENV)
    stop.install()
    try:
        assert os.environ[TUNE_SIGINT_ENV] == "1"
        asked: list[int] = []
        with pytest.raises(StudyInterrupted) as info, stop.tune_run():
            signal.signal(signal.SIGUSR1, lambda sig, frame: asked.append(sig))
            signal.raise_signal(signal.SIGTERM)  # Tune is asked to stop; fit() goes on
            assert asked == [signal.SIGUSR1] and stop.interrupted
        assert info.value.exit_code == 143  # raised when fit() returned
        with pytest.raises(StudyInterrupted):  # a second signal: at once
            signal.raise_signal(signal.SIGINT)
        fresh = StopSignals()
        signal.signal(signal.SIGINT, fresh._handle)
        with pytest.raises(StudyInterrupted) as info:  # outside a Tune run: at once
            signal.raise_signal(signal.SIGINT)
        assert info.value.exit_code == 130
    finally:
        stop.restore()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if env_before is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)


@pytest.mark.slow
def test_sigint_in_the_search_stops_it_and_resume_finishes_it(
    tmp_path: Path, teachers: Path
) -> None:
    storage = tmp_path / "st"
    cmd = [*study_cmd(storage, teachers), *SEARCH_ONLY]
    err = tmp_path / "stderr.txt"
    proc = start(cmd, tmp_path, err, ENV)
    seen: list[str] = []
    # once a trial is running
    elapsed = fault_during_search(proc, lambda: os.kill(proc.pid, signal.SIGINT), seen, 60)
    out, stderr = "".join(seen), err.read_text()
    assert proc.returncode == 130, out + stderr
    assert elapsed < 20, f"stopped {elapsed:.1f}s after SIGINT"
    line = interrupted_line(stderr)
    assert "SIGINT" in line and f"--storage {storage}" in line and line.endswith("--resume")
    assert "Traceback" not in stderr, stderr
    # nothing claims the cut trials: no leaderboard, no trials.json, no report
    assert not (storage / "leaderboard.json").exists() and not (storage / "trials.json").exists()
    _, parents, children = runs_of(storage, "quickstart")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert children and not [c for c in children if c.info.status == "RUNNING"]
    for c in children:  # a FINISHED run is a complete trial, or one ASHA stopped
        if c.info.status == "FINISHED":
            complete = int(c.data.metrics["training_iteration"]) == 6
            assert complete or c.data.tags.get("stopped_early") == "true", c.data
    cut = {c.data.tags["trial_id"] for c in children if c.info.status == "KILLED"}
    assert cut, [(c.data.tags["trial_id"], c.info.status) for c in children]

    t0 = time.time()
    r = run_named_command(line, tmp_path, ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"resume: {time.time() - t0:.1f}s")
    done = check_structure(storage, "quickstart", 3, 0)
    status = {c.data.tags["trial_id"]: c.info.status for c in done}
    assert cut <= set(status), "a cut trial was not resumed under its own id"
    assert set(status.values()) == {"FINISHED"}, status


@pytest.mark.slow
def test_sigterm_in_the_baselines_starts_no_search_and_resume_finishes(
    tmp_path: Path, teachers: Path
) -> None:
    storage = tmp_path / "st"
    extra = ["--num-samples", "1", "--max-epochs", "2", "--skip-final"]
    cmd = [*study_cmd(storage, teachers), *extra]
    err = tmp_path / "stderr.txt"
    proc = start(cmd, tmp_path, err, ENV)
    seen: list[str] = []
    try:
        wait_for_line(proc, running_line("baselines"), seen)
        elapsed = stop_with(proc, signal.SIGTERM, seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, stderr = "".join(seen), err.read_text()
    assert proc.returncode == 143, out + stderr
    assert elapsed < 20, f"stopped {elapsed:.1f}s after SIGTERM"
    line = interrupted_line(stderr)
    assert "SIGTERM" in line
    # the next phase never started
    assert "search:" not in out and not (storage / "ray" / "search").exists(), out
    _, parents, children = runs_of(storage, "quickstart")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert {c.data.tags["role"] for c in children} == {"baseline"}
    assert not [c for c in children if c.info.status == "RUNNING"]
    for c in children:
        if c.info.status == "FINISHED":  # no scheduler on baselines: finished = all epochs
            assert int(c.data.metrics["training_iteration"]) == 2, c.data
    assert [c for c in children if c.info.status == "KILLED"]

    r = run_named_command(line, tmp_path, ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = check_structure(storage, "quickstart", 1, 6)
    assert {c.info.status for c in done if c.data.tags["role"] == "baseline"} == {"FINISHED"}
    assert all(
        int(c.data.metrics["training_iteration"]) == 2
        for c in done
        if c.data.tags["role"] == "baseline"
    )


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): the driver's raylet, its workers, ..."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _trial_workers(driver: int) -> list[int]:
    """The Ray worker processes of this driver's private Ray that run a trial."""
    found = []
    for pid in _descendants(driver):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ImplicitFunc"):
            found.append(pid)
    return found


@pytest.mark.slow
def test_a_killed_trial_worker_is_retried_and_the_study_finishes(
    tmp_path: Path, teachers: Path
) -> None:
    """SIGKILL to the Ray worker process training a trial (an OOM kill, a lost node): Ray
    retries the trial from its checkpoint (``failure.max_failures``, default 2), the study
    ends 0 with one FINISHED MLflow run per trial and says nothing about it on the console
    beyond the trial's progress lines."""
    storage = tmp_path / "st"
    cmd = [*study_cmd(storage, teachers), *SEARCH_ONLY]
    err = tmp_path / "stderr.txt"
    proc = start(cmd, tmp_path, err, ENV)
    seen: list[str] = []

    def kill_workers() -> None:
        workers = _trial_workers(proc.pid)
        assert workers, "no trial worker found below the driver"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    fault_during_search(proc, kill_workers, seen, timeout=600)
    out, stderr = "".join(seen), err.read_text()
    assert proc.returncode == 0, out[-3000:] + stderr[-3000:]
    assert "Traceback" not in out + stderr, stderr[-3000:]
    done = check_structure(storage, "quickstart", 3, 0)
    assert {c.info.status for c in done} == {"FINISHED"}, [
        (c.data.tags["trial_id"], c.info.status) for c in done
    ]
    for c in done:  # each trial ran to the end or was stopped by ASHA, not cut short
        complete = int(c.data.metrics["training_iteration"]) == 6
        assert complete or c.data.tags.get("stopped_early") == "true", c.data
    # the killed attempt is on record (Ray's error text) in the run of the retried trial
    client, _, _ = runs_of(storage, "quickstart")
    retried = [c for c in done if client.list_artifacts(c.info.run_id, "errors")]
    assert retried, "no run records the killed attempt"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[dict]:
    """An ``mlflow server`` on a free port over ``<tmp>/st/mlflow.db`` (so the tests read
    its runs from the file, up or down); ``start()``/``stop()`` it at will."""
    db = tmp_path / "st" / "mlflow.db"
    db.parent.mkdir()
    server = MlflowServer(db, tmp_path / "artifacts", tmp_path / "mlflow_server.log", env=ENV)
    try:
        yield {"uri": server.uri, "start": server.start, "stop": server.stop}
    finally:
        server.stop()


@pytest.mark.slow
def test_mlflow_down_until_the_end_fails_and_the_named_command_delivers(
    tmp_path: Path, teachers: Path, mlflow_server: dict
) -> None:
    storage = tmp_path / "st"
    mlflow_server["start"]()
    extra = ["--num-samples", "2", "--max-epochs", "4", "--skip-baselines", "--skip-final"]
    cmd = [*study_cmd(storage, teachers), *extra, "--tracking-uri", mlflow_server["uri"]]
    env = {**ENV, "KDSTUDY_MLFLOW_WAIT_S": "3"}
    err = tmp_path / "stderr.txt"
    proc = start(cmd, tmp_path, err, env)
    seen: list[str] = []
    # parent and trial runs exist; then MLflow stays down until the study ends
    after_kill = fault_during_search(proc, mlflow_server["stop"], seen, timeout=300)
    out, stderr = "".join(seen), err.read_text()
    assert proc.returncode == 1, out + stderr
    assert "retrying for up to 3 s" in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: MLflow at") and "deliver them with: " in last, stderr
    assert (storage / "mlflow_outbox.jsonl").is_file()
    print(f"study end after the server died: {after_kill:.1f}s")
    _, _, children = runs_of(storage, "quickstart")
    assert [c for c in children if c.info.status == "RUNNING"]  # what the outbox must fix

    mlflow_server["start"]()
    r = run_named_command(last, tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (storage / "mlflow_outbox.jsonl").exists()
    done = check_structure(storage, "quickstart", 2, 0)
    assert {c.info.status for c in done} == {"FINISHED"}
    for c in done:
        assert c.data.tags["stopped_early"] in ("true", "false")


@pytest.mark.slow
def test_a_crash_after_the_trials_leaves_no_run_running(tmp_path: Path, teachers: Path) -> None:
    """The leaderboard cannot be written (its path is a directory): the driver fails, and
    the parent run ends FAILED with no child left RUNNING."""
    storage = tmp_path / "st"
    (storage / "leaderboard.txt").mkdir(parents=True)
    extra = ["--num-samples", "1", "--max-epochs", "2", "--skip-baselines", "--skip-final"]
    r = subprocess.run(
        [*study_cmd(storage, teachers), *extra],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=FIRST_PHASE_TIMEOUT_S,
    )
    assert r.returncode == 1 and "IsADirectoryError" in r.stderr, r.stdout + r.stderr
    _, parents, children = runs_of(storage, "quickstart")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert children and not [c for c in children if c.info.status == "RUNNING"]
