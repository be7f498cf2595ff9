"""The study service end to end: real Ray, real MLflow store, real digits data.

These guard the promises of the study issue: the quickstart runs (the README's main
command), exactly one MLflow run per trial across --resume and a killed driver, no run
left RUNNING, nested parent/children with role/family/seed tags.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import shared_teachers

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "study" / "run.py")]
# the product's default: token auth on (a private local Ray gets a fresh token)
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
    "PYTHONUNBUFFERED": "1",
}


def runs_of(storage: Path, experiment: str) -> tuple[object, list, list]:
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") in ("trial", "baseline", "final")]
    return client, parents, children


def study_cmd(tmp_path: Path, storage: Path, *extra: str) -> list[str]:
    space = str(REPO / "search_spaces" / "quickstart.yaml")
    teachers = str(shared_teachers())
    return [*RUN, "--space", space, "--storage", str(storage), "--teachers-dir", teachers, *extra]


def check_structure(
    storage: Path, experiment: str, n_trials: int, n_baselines: int, n_final: int = 0
) -> list:
    client, parents, children = runs_of(storage, experiment)
    assert len(parents) == 1
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert len(children) == n_trials + n_baselines + n_final
    ids = [c.data.tags["trial_id"] for c in children]
    assert len(set(ids)) == len(ids), "more than one run for a trial"
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.info.status in ("FINISHED", "FAILED", "KILLED")
        assert c.info.status != "RUNNING"
        assert {"family", "seed", "config_hash", "git_sha"} <= set(c.data.tags)
        hist = client.get_metric_history(c.info.run_id, "training_iteration")
        steps = sorted(int(m.step) for m in hist)
        assert steps == list(range(1, len(steps) + 1)), f"steps {steps} duplicated or missing"
        if c.info.status == "FAILED" and not steps:
            continue  # diverged in its first epoch (TPE may propose such a weight): no metrics
        assert int(c.data.metrics["training_iteration"]) == len(steps)
        # the test split is evaluated by final runs only, the validation split never by them
        split = "test" if c.data.tags["role"] == "final" else "val"
        assert c.data.tags["split"] == split
        assert f"{split}/top1_best" in c.data.metrics and "weight/ce" in c.data.metrics
        other = "val" if split == "test" else "test"
        assert not any(k.startswith(f"{other}/") for k in c.data.metrics), c.data.metrics
    baselines = [c for c in children if c.data.tags["role"] == "baseline"]
    assert len(baselines) == n_baselines
    assert len([c for c in children if c.data.tags["role"] == "final"]) == n_final
    return children


@pytest.mark.slow
def test_quickstart_runs_and_tracks_every_trial_once(tmp_path: Path) -> None:
    """The README's main command (make quickstart) on a fresh study directory."""
    storage = tmp_path / "qs"
    cmd = study_cmd(tmp_path, storage)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"quickstart wall time: {elapsed:.1f}s")
    out = r.stdout
    assert "Leaderboard (val/top1_best" in out and "MLflow UI: mlflow ui --backend-store-uri" in out
    for name in ("kd", "wkd_l", "gkl"):
        assert f"\n{name} " in out
    children = check_structure(storage, "quickstart", 16, 6, n_final=12)
    # the final runs and the report (tests/test_final_report.py checks their numbers)
    assert "Final runs: last-epoch test top-1" in out and "seed-paired Δ" in out
    for name in ("report.md", "report.html", "summary.json", "tables/comparisons.csv"):
        assert (storage / "report" / name).is_file(), name
    # stopped-early trials are tagged so the UI can filter them
    early = [c for c in children if c.data.tags.get("stopped_early") == "true"]
    full = [c for c in children if c.data.tags.get("stopped_early") == "false"]
    assert early and full
    assert all(int(c.data.metrics["training_iteration"]) < 12 for c in early)
    # the published WKL point was evaluated (the first searched trial)
    searched = [c for c in children if c.data.tags["role"] == "trial"]
    assert any(
        c.data.params.get("handoff.w_start") == "0.625"
        and c.data.params.get("losses.kl.weight") == "0.5"
        for c in searched
    )
    board = json.loads((storage / "leaderboard.json").read_text())
    assert set(board["baselines"]) == {"kd", "wkd_l", "gkl"}
    assert all(info["n"] == 2 for info in board["baselines"].values())
    # a second invocation without --resume refuses and clobbers nothing
    r2 = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 2 and "pass --resume" in r2.stderr
    # --resume on a finished study creates no new runs
    r3 = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert r3.returncode == 0, r3.stderr[-3000:]
    check_structure(storage, "quickstart", 16, 6, n_final=12)


@pytest.mark.slow
def test_killed_driver_resumes_with_one_run_per_trial(tmp_path: Path) -> None:
    storage = tmp_path / "kill"
    extra = ("--num-samples", "6", "--max-epochs", "8", "--skip-baselines", "--skip-final")
    cmd = study_cmd(tmp_path, storage, *extra)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until some trials finished, then kill -9 the driver
            seen.append(line)
            if " done: " in line and len([s for s in seen if " done: " in s]) >= 2:
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    _, parents, children = runs_of(storage, "quickstart")
    assert parents and children
    time.sleep(2)
    r = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_structure(storage, "quickstart", 6, 0)


@pytest.mark.slow
def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "diverge.yaml"
    space.write_text(
        f"extends: {REPO / 'search_spaces' / 'quickstart.yaml'}\n"
        "name: diverge\n"
        "trial: {epochs: 4}\n"
        "search:\n"
        "  optim.lr: {type: categorical, values: [0.05, 1.0e+12]}\n"
        "points: [{optim.lr: 1.0e+12}, {optim.lr: 0.05}]\n"
        "samples: 2\n"
        "trial_scheduler: {kind: fifo}\n"
        "failure: {max_failures: 2}\n"
    )
    storage = tmp_path / "st"
    cmd = [
        *RUN,
        "--space",
        str(space),
        "--storage",
        str(storage),
        "--skip-baselines",
        "--skip-final",
        "--teachers-dir",
        str(shared_teachers()),
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "(1 searched trial(s) failed" in r.stdout
    # the console: one line for the failed trial, with its reason and where the details
    # are; Ray's tracebacks went to the study log
    failed_lines = [x for x in r.stdout.splitlines() if " FAILED " in x]
    assert len(failed_lines) == 1, r.stdout
    assert "NonFiniteLoss: non-finite loss at epoch 1" in failed_lines[0]
    assert "failure.json" in failed_lines[0]
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert "Traceback" in (storage / "study.log").read_text()
    client, _, children = runs_of(storage, "diverge")
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    arts = [a.path for a in client.list_artifacts(failed.info.run_id, "outputs")]
    assert "outputs/failure.json" in arts
    error = client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))
    assert "NonFiniteLoss: non-finite loss at epoch 1" in Path(error).read_text()
    # Ray retried it (max_failures 2); the retries failed at once, without recomputing
    ray_error = storage / "ray" / "search" / failed.data.tags["trial_id"] / "error.txt"
    attempts = ray_error.read_text()
    assert (
        attempts.count("Failure #") == 3
        and attempts.count("NonFiniteLoss: (again, not retried)") == 2
    )


@pytest.mark.slow
def test_repeats_run_every_configuration_under_each_seed(tmp_path: Path) -> None:
    """repeats: 2 on a 2-point space: 2 configurations x seeds [3, 4] = 4 trials (the search
    then finishes rather than repeat a configuration), grouped in MLflow and on the board,
    and early-stopped by configuration (SeedGroupASHA), not seed by seed."""
    space = tmp_path / "rep.yaml"
    space.write_text(
        f"extends: {REPO / 'benchmarks' / 'spaces' / 'search_kd_grid.yaml'}\n"
        "name: rep\n"
        "trial: {epochs: 6}\n"
        "search: {losses.kd.temperature: null,\n"
        "         losses.kd.weight: {type: categorical, values: [1.0, 4.0]}}\n"
        # weight 1 first: at epoch 1 it leads weight 4 by ~19 points (mean of seeds 3, 4),
        # so the rule stops weight 4 (with weight 4 first, both would go on)
        "points: [{losses.kd.weight: 1.0}]\n"
        "samples: 3\n"
        "seeds: [3, 4, 5]\n"
        "repeats: 2\n"
        "concurrency: 2\n"
        "trial_scheduler: {kind: asha, grace_period: 0.16, reduction_factor: 6}\n"
    )
    storage = tmp_path / "st"
    cmd = [
        *RUN,
        "--space",
        str(space),
        "--storage",
        str(storage),
        "--skip-baselines",
        "--skip-final",
    ]
    # benchmarks/spaces use another validation split: a teacher registry of its own
    cmd += ["--teachers-dir", str(tmp_path / "teachers")]
    dry = subprocess.run([*cmd, "--dry-run"], env=ENV, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "6 searched trial(s) (3 configurations x 2 seeds [3, 4])" in (
        dry.stdout
    )
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    children = check_structure(storage, "rep", 4, 0)
    groups: dict[str, set[str]] = {}
    for c in children:
        groups.setdefault(c.data.tags["config_group"], set()).add(c.data.tags["seed"])
    assert list(groups.values()) == [{"3", "4"}, {"3", "4"}]
    board = json.loads((storage / "leaderboard.json").read_text())
    rows = board["searched"]
    assert len(rows) == 2 and all(r["n"] == 2 for r in rows)
    for row in rows:
        per_trial = [t["value"] for t in board["trials"] if t["trial_id"] in row["trial_ids"]]
        assert row["value"] == pytest.approx(sum(per_trial) / 2)
    assert "searched configurations, mean over seeds" in r.stdout
    # the rung is epoch 1: the configuration judged first goes on (both its seeds run
    # first, 2 at a time); the other goes on iff its mean at epoch 1 is not below
    started = {c.data.tags["trial_id"]: c.info.start_time for c in children}
    at_rung, reached = {}, {}
    for result in (storage / "ray" / "search").glob("*/result.json"):
        res = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        at_rung[res[0]["trial_id"]] = res[0]["val/top1_best"]
        reached[res[0]["trial_id"]] = res[-1]["training_iteration"]
    ids = [tuple(r["trial_ids"]) for r in rows]
    first, second = sorted(ids, key=lambda g: min(started[t] for t in g))
    assert all(reached[t] == 6 for t in first)
    mean = {g: sum(at_rung[t] for t in g) / 2 for g in ids}
    if mean[second] >= mean[first]:
        assert all(reached[t] == 6 for t in second), (mean, reached)
    else:
        # stopped when its last seed reached the rung; a seed that started earlier (2 slots,
        # issued in turn) may have gone on meanwhile, even to the end
        assert any(reached[t] < 6 for t in second), (mean, reached)
        assert not next(r for r in rows if tuple(r["trial_ids"]) == second)["complete"]
