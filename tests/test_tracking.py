"""Tests of study/tracking.py and study/callbacks.py against real MLflow stores, a real
``mlflow server`` and a real Ray Tune run (no mocks).

Every check reads MLflow back through a *separate* ``MlflowClient`` with plain, unfiltered
searches and filters in Python: an independent view of the store, not the tracker's own
tag-filtered lookups.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from study.tracking import (
    FULL_PARAMS_ARTIFACT,
    STEP_KEY,
    StudyTracker,
    flatten_params,
)
from tests.mlflow_server import MlflowServer, free_port

EXPERIMENT = "kd-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating one runs MLflow's schema migrations (~9 s on
    this machine), so tests share it and isolate themselves by experiment (fixture ``exp``)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow').resolve() / 'mlflow.db'}"


@pytest.fixture()
def exp(request: pytest.FixtureRequest) -> str:
    """A fresh experiment name per test."""
    return f"{EXPERIMENT}-{request.node.name}"


def _all_runs(uri: str, experiment: str) -> list[Run]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return list(
        client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    )


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _children(runs: list[Run], parent_id: str) -> list[Run]:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def _tracker_warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "study.tracking" and r.levelno == logging.WARNING and needle in r.getMessage()
    ]


# -- pure helpers ---------------------------------------------------------------------------


def test_flatten_params_matches_manual_walk() -> None:
    nested = {"kd": {"weight": 0.5, "T": 4}, "lr": 0.1, "stages": [1, 2], "opt": {"m": {"b": None}}}
    # Independent formulation: an explicit stack walk instead of recursion.
    expected: dict[str, str] = {}
    stack: list[tuple[str, Any]] = [("", nested)]
    while stack:
        prefix, node = stack.pop()
        for k, v in node.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                stack.append((name, v))
            else:
                expected[name] = "[1, 2]" if isinstance(v, list) else str(v)
    assert flatten_params(nested) == expected
    assert set(expected) == {"kd.weight", "kd.T", "lr", "stages", "opt.m.b"}


# -- SQLite store ---------------------------------------------------------------------------


def test_parent_children_nesting_params_and_texts(tmp_path: Path, store: str, exp: str) -> None:
    uri = store
    tracker = StudyTracker(uri, exp, "study-a")
    long_value = "x" * 7000  # above MLflow's 6000-char param limit
    parent = tracker.open_study(
        run_name="study-a",
        params={"kd": {"weight": 0.9, "T": 4.0}, "notes": long_value},
        tags={"family": "kd"},
        texts={"spec.yaml": "loss: kd\n", "space.json": '{"kd/T": [1, 8]}'},
    )
    assert parent is not None and tracker.parent_run_id == parent
    first = tracker.trial_run("t1", run_name="t1-run", params={"kd": {"T": 2}}, tags={"a": "b"})
    again = tracker.trial_run("t1", run_name="t1-run", params={"kd": {"T": 2}}, tags={"a": "b"})
    second = tracker.trial_run("t2", run_name="t2-run", params={"kd": {"T": 3}}, tags={})
    assert first == again and first != second

    runs = _all_runs(uri, exp)
    assert len(runs) == 3
    by_id = {r.info.run_id: r for r in runs}
    assert {r.info.run_id for r in _children(runs, parent)} == {first, second}
    p = by_id[parent]
    assert p.info.run_name == "study-a"
    assert p.data.tags["study_id"] == "study-a" and p.data.tags["role"] == "study"
    assert p.data.params["kd.weight"] == "0.9" and p.data.params["kd.T"] == "4.0"
    assert p.data.params["notes"] == "x" * 6000
    c = by_id[first]
    assert c.info.status == "RUNNING" and c.info.run_name == "t1-run"
    assert c.data.tags["trial_id"] == "t1" and c.data.tags["a"] == "b"
    assert c.data.params == {"kd.T": "2"}

    client = MlflowClient(uri)
    out = tmp_path / "dl"
    for name, text in [("spec.yaml", "loss: kd\n"), ("space.json", '{"kd/T": [1, 8]}')]:
        local = client.download_artifacts(parent, name, str(out))
        assert Path(local).read_text() == text
    full = client.download_artifacts(parent, FULL_PARAMS_ARTIFACT, str(out))
    assert '"notes": "' + long_value + '"' in Path(full).read_text()
    # Artifacts live beside the SQLite file, not in the current directory.
    assert (Path(store.removeprefix("sqlite:///")).parent / "mlartifacts").is_dir()


def test_log_result_once_per_step_and_value_cleaning(
    store: str, exp: str, caplog: pytest.LogCaptureFixture
) -> None:
    uri = store
    tracker = StudyTracker(uri, exp, "study-b")
    tracker.open_study(run_name="s", params={}, tags={}, texts={})
    run_id = tracker.trial_run("t1", run_name="t1", params={}, tags={})
    assert run_id is not None
    metrics = {
        "val/top1": 0.5,
        "loss": float("nan"),
        "grad": float("inf"),
        "name": "abc",
        "flag": True,
        "bad|name": 1.0,
        "epoch": 1,
    }
    assert tracker.log_result("t1", 1, metrics) is True
    assert tracker.log_result("t1", 1, {"val/top1": 0.7}) is False  # duplicate step
    assert tracker.log_result("t1", 2, {"val/top1": 0.6, "loss": float("nan")}) is True

    run = MlflowClient(uri).get_run(run_id)
    assert set(run.data.metrics) == {"val/top1", "epoch", STEP_KEY}
    history = MlflowClient(uri).get_metric_history(run_id, "val/top1")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6)]
    assert _steps(uri, run_id, STEP_KEY) == [1, 2]
    assert [m.value for m in MlflowClient(uri).get_metric_history(run_id, STEP_KEY)] == [1.0, 2.0]
    # Each dropped key is warned about once, although "loss" was non-finite twice.
    assert len(_tracker_warnings(caplog, "'loss'")) == 1


def test_driver_restart_reuses_runs_skips_steps_and_closes_stale(store: str, exp: str) -> None:
    uri = store
    first = StudyTracker(uri, exp, "study-c")
    parent = first.open_study(run_name="s", params={"lr": 0.1}, tags={}, texts={})
    run_a = first.trial_run("a", run_name="a", params={"x": 1}, tags={})
    run_b = first.trial_run("b", run_name="b", params={"x": 2}, tags={})
    for step in (1, 2):
        first.log_result("a", step, {"loss": 1.0 / step})
    first.log_result("b", 1, {"loss": 3.0})
    first.close_trial("b", "FINISHED")
    # The driver "dies" here: parent and trial a stay RUNNING.

    second = StudyTracker(uri, exp, "study-c")
    # On resume a new param is added, a changed one keeps its first value (params immutable).
    assert (
        second.open_study(run_name="s", params={"lr": 0.2, "seed": 7}, tags={}, texts={}) == parent
    )
    assert second.close_stale_runs() == [run_a]
    statuses = {r.info.run_id: r.info.status for r in _all_runs(uri, exp)}
    assert statuses == {parent: "RUNNING", run_a: "KILLED", run_b: "FINISHED"}

    assert second.trial_run("a", run_name="a", params={"x": 1}, tags={}) == run_a
    assert MlflowClient(uri).get_run(run_a).info.status == "RUNNING"
    assert second.log_result("a", 2, {"loss": 0.5}) is False  # learnt from the history
    assert second.log_result("a", 3, {"loss": 1.0 / 3}) is True
    assert _steps(uri, run_a, "loss") == [1, 2, 3]

    second.finish_study("FAILED", metrics={"best/val_top1": 0.7}, tags={"outcome": "x"})
    runs = _all_runs(uri, exp)
    assert len(runs) == 3
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses == {parent: "FAILED", run_a: "KILLED", run_b: "FINISHED"}
    p = next(r for r in runs if r.info.run_id == parent)
    assert p.data.params == {"lr": "0.1", "seed": "7"}
    assert p.data.metrics == {"best/val_top1": 0.7} and p.data.tags["outcome"] == "x"


def test_finish_study_finished_closes_children_and_pickle_roundtrip(store: str, exp: str) -> None:
    uri = store
    tracker = StudyTracker(uri, exp, "study-d")
    parent = tracker.open_study(run_name="s", params={}, tags={}, texts={})
    tracker.trial_run("t", run_name="t", params={}, tags={})
    tracker.log_result("t", 1, {"m": 1.0})
    # What Tuner.restore does with the callback's tracker: a fresh copy from a pickle.
    clone = pickle.loads(pickle.dumps(tracker))
    assert clone.parent_run_id == parent and clone.experiment_id == tracker.experiment_id
    assert clone.log_result("t", 1, {"m": 9.0}) is False
    assert clone.log_result("t", 2, {"m": 2.0}) is True
    clone.finish_study("FINISHED", texts={"summary.md": "done"})
    runs = _all_runs(uri, exp)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    child = _children(runs, parent)[0]
    assert _steps(uri, child.info.run_id, "m") == [1, 2]


def test_finish_study_retires_runs_of_trials_the_study_lost(store: str, exp: str) -> None:
    """A driver killed after a trial's run was created but before Ray saved the trial leaves a
    run the resumed study never sees again: finish_study(known_trials=...) soft-deletes it."""
    uri = store
    tracker = StudyTracker(uri, exp, "study-orphans")
    parent = tracker.open_study(run_name="s", params={}, tags={}, texts={})
    kept = tracker.trial_run("kept", run_name="k", params={}, tags={})
    tracker.log_result("kept", 1, {"m": 1.0})
    lost = tracker.trial_run("lost", run_name="l", params={}, tags={})
    tracker.log_result("lost", 1, {"m": 0.5})
    other = StudyTracker(uri, exp, "study-other")  # another study's run is never touched
    other.open_study(run_name="o", params={}, tags={}, texts={})
    foreign = other.trial_run("lost", run_name="l", params={}, tags={})
    # the resumed driver: a fresh tracker on the same study
    resumed = StudyTracker(uri, exp, "study-orphans")
    resumed.open_study(run_name="s", params={}, tags={}, texts={})
    resumed.finish_study("FINISHED", known_trials=["kept"])
    runs = {r.info.run_id: r for r in _all_runs(uri, exp)}
    assert runs[lost].info.lifecycle_stage == "deleted"
    assert runs[lost].info.status == "KILLED" and "orphaned" in runs[lost].data.tags
    assert runs[kept].info.lifecycle_stage == "active" and runs[kept].info.status == "FINISHED"
    assert runs[foreign].info.lifecycle_stage == "active"
    assert runs[foreign].info.status == "RUNNING"
    assert runs[parent].info.status == "FINISHED"
    # idempotent: a replayed finish (outbox) changes nothing
    resumed.finish_study("FINISHED", known_trials=["kept"])
    again = {r.info.run_id: (r.info.status, r.info.lifecycle_stage) for r in _all_runs(uri, exp)}
    assert again == {k: (r.info.status, r.info.lifecycle_stage) for k, r in runs.items()}


def test_baseline_and_final_runs_are_found_closed_and_retired_like_trials(
    store: str, exp: str
) -> None:
    """One tag ``role`` (study | trial | baseline | final): a child run of any role is found
    again by its ``trial_id``, closed when stale and retired when the study lost it."""
    uri = store
    first = StudyTracker(uri, exp, "study-roles")
    parent = first.open_study(run_name="s", params={}, tags={}, texts={})
    runs_by_role = {
        role: first.trial_run(role, run_name=role, params={}, tags={"role": role})
        for role in ("trial", "baseline", "final")
    }
    lost = first.trial_run("lost", run_name="l", params={}, tags={"role": "final"})
    for trial_id in runs_by_role:
        assert first.log_result(trial_id, 1, {"m": 1.0}) is True
    tags = {r.info.run_id: r.data.tags for r in _all_runs(uri, exp)}
    assert tags[parent]["role"] == "study"
    assert {role: tags[run_id]["role"] for role, run_id in runs_by_role.items()} == {
        "trial": "trial",
        "baseline": "baseline",
        "final": "final",
    }
    assert not any("run_kind" in t for t in tags.values())  # one word for one meaning

    # A restarted driver: stale runs of every role are closed, each found again by trial_id.
    second = StudyTracker(uri, exp, "study-roles")
    assert second.open_study(run_name="s", params={}, tags={}, texts={}) == parent
    assert sorted(second.close_stale_runs()) == sorted([*runs_by_role.values(), lost])
    for role, run_id in runs_by_role.items():
        assert second.trial_run(role, run_name=role, params={}, tags={"role": role}) == run_id
        assert second.log_result(role, 1, {"m": 9.0}) is False  # learnt from the history
        assert second.log_result(role, 2, {"m": 2.0}) is True
        assert _steps(uri, run_id, "m") == [1, 2]
    second.close_trial("final", "FINISHED", tags={"note": "x"})
    assert MlflowClient(uri).get_run(runs_by_role["final"]).data.tags["note"] == "x"
    second.finish_study("FINISHED", known_trials=list(runs_by_role))
    runs = {r.info.run_id: r for r in _all_runs(uri, exp)}
    assert runs[lost].info.lifecycle_stage == "deleted" and "orphaned" in runs[lost].data.tags
    assert {runs[run_id].info.status for run_id in runs_by_role.values()} == {"FINISHED"}
    assert runs[parent].info.status == "FINISHED"
    with pytest.raises(ValueError, match="role"):  # the parent's role is not a trial's
        second.trial_run("x", run_name="x", params={}, tags={"role": "study"})


def test_studies_in_one_experiment_do_not_interfere(store: str, exp: str) -> None:
    uri = store
    one = StudyTracker(uri, exp, "study-1")
    two = StudyTracker(uri, exp, "study-2")
    p1 = one.open_study(run_name="one", params={}, tags={}, texts={})
    p2 = two.open_study(run_name="two", params={}, tags={}, texts={})
    # Same Ray trial id in two studies -> two distinct runs.
    r1 = one.trial_run("same", run_name="x", params={}, tags={})
    r2 = two.trial_run("same", run_name="x", params={}, tags={})
    assert len({p1, p2, r1, r2}) == 4
    assert one.close_stale_runs() == [r1]
    one.finish_study("FINISHED")
    statuses = {r.info.run_id: r.info.status for r in _all_runs(uri, exp)}
    assert statuses == {p1: "FINISHED", r1: "KILLED", p2: "RUNNING", r2: "RUNNING"}
    assert two.log_result("same", 1, {"m": 1.0}) is True


def test_invalid_arguments_are_rejected(store: str, exp: str) -> None:
    uri = store
    with pytest.raises(ValueError):
        StudyTracker(uri, exp, "it's")
    tracker = StudyTracker(uri, exp, "study-e")
    with pytest.raises(ValueError):
        tracker.close_trial("t", "DONE")
    with pytest.raises(RuntimeError):  # children need the parent first
        tracker.trial_run("t", run_name="t", params={}, tags={})


# -- outage ---------------------------------------------------------------------------------


@pytest.fixture()
def fast_failing_http(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without this MLflow retries a dead server for minutes (7 retries, exponential backoff).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def test_outage_in_memory_outbox_never_raises(
    fast_failing_http: None, caplog: pytest.LogCaptureFixture, exp: str
) -> None:
    tracker = StudyTracker(f"http://127.0.0.1:{free_port()}", exp, "study-f")
    assert tracker.experiment_id is None
    assert tracker.open_study(run_name="s", params={"a": 1}, tags={}, texts={}) is None
    assert tracker.trial_run("t", run_name="t", params={}, tags={}) is None
    assert tracker.log_result("t", 1, {"m": 1.0}) is True
    assert tracker.log_result("t", 1, {"m": 1.0}) is False  # already queued
    tracker.close_trial("t", "FINISHED")
    assert tracker.close_stale_runs() == []
    assert tracker.flush_outbox() is False
    tracker.finish_study("FINISHED")
    assert len(_tracker_warnings(caplog, "unreachable (")) == 1
    assert len(_tracker_warnings(caplog, "remain in the outbox")) == 1


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """Yields (url, start): the server is started on demand and always killed afterwards."""
    server = MlflowServer(
        tmp_path / "server.db", tmp_path / "server-artifacts", tmp_path / "server.log"
    )
    try:
        yield server.uri, server.start
    finally:
        server.stop()


@pytest.mark.slow
def test_outbox_replays_exactly_once_when_server_comes_back(
    tmp_path: Path,
    exp: str,
    fast_failing_http: None,
    mlflow_server: tuple[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, start_server = mlflow_server
    outbox = tmp_path / "outbox" / "mlflow-outbox.jsonl"
    tracker = StudyTracker(url, exp, "study-g", outbox_path=str(outbox))
    tracker.open_study(run_name="s", params={"lr": 0.1}, tags={}, texts={"spec.yaml": "a: 1\n"})
    tracker.trial_run("t1", run_name="t1", params={"x": 1}, tags={"k": "v"})
    for step in (1, 2, 3):
        assert tracker.log_result("t1", step, {"loss": 1.0 / step}) is True
    assert tracker.log_result("t1", 2, {"loss": 0.5}) is False
    tracker.close_trial("t1", "FINISHED", tags={"stopped_early": "false"})
    tracker.log_trial_text("t1", "note.txt", "hello")
    assert len(outbox.read_text().splitlines()) == 7
    assert len(_tracker_warnings(caplog, "unreachable (")) == 1  # one line per outage
    saved = outbox.read_text()

    start_server()
    assert tracker.flush_outbox() is True
    assert not outbox.exists()
    assert len(_tracker_warnings(caplog, "reachable again")) == 1

    def check() -> None:
        runs = _all_runs(url, exp)
        assert len(runs) == 2
        parent = next(r for r in runs if r.data.tags.get("role") == "study")
        (child,) = _children(runs, parent.info.run_id)
        assert parent.info.status == "RUNNING" and parent.data.params == {"lr": "0.1"}
        assert child.info.status == "FINISHED" and child.data.tags["stopped_early"] == "false"
        assert child.data.params == {"x": "1"} and child.data.tags["k"] == "v"
        history = MlflowClient(url).get_metric_history(child.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]

    check()
    # Replaying the same outbox again (a crash before it was cleared; a second driver on it)
    # lands nothing twice.
    outbox.write_text(saved)
    restarted = StudyTracker(url, exp, "study-g", outbox_path=str(outbox))
    assert restarted.flush_outbox() is True
    check()
    # Live writes after recovery go straight through and stay deduplicated.
    assert tracker.log_result("t1", 3, {"loss": 9.0}) is False
    tracker.finish_study("FINISHED")
    assert {r.info.status for r in _all_runs(url, exp)} == {"FINISHED"}


# -- Ray Tune -------------------------------------------------------------------------------


@pytest.fixture()
def ray_local(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    # token auth, as the product runs Ray: tests/conftest.py set the mode and a fresh
    # token before anything imported Ray (Ray reads the mode once, at import)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _describe(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    return f"x={config['x']}", {"x": config["x"]}, {"kind": "toy"}


@pytest.mark.slow
def test_ray_tune_callback_one_run_per_trial_across_restore(
    tmp_path: Path, store: str, exp: str, ray_local: None
) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from study.callbacks import MLflowStudyCallback

    marker = str(tmp_path / "failed-once")

    def trainable(config: dict[str, Any]) -> None:
        for i in range(1, 5):
            # The best trial fails once at iteration 3 (before the restore), to exercise
            # FAILED -> reopened -> FINISHED and the skipping of re-sent iterations 1-2.
            if config["x"] == 6 and i == 3 and not os.path.exists(config["marker"]):
                Path(config["marker"]).touch()
                raise RuntimeError("planned failure")
            tune.report({"score": float(config["x"] * i), "val/loss": 1.0 / (config["x"] * i)})

    uri = store
    tracker = StudyTracker(uri, exp, "study-ray")
    parent = tracker.open_study(run_name="ray", params={}, tags={}, texts={})
    callback = MLflowStudyCallback(tracker, _describe, max_iterations=4)
    tuner = tune.Tuner(
        trainable,
        # Descending x: later trials are worse, so ASHA stops some of them at its rungs.
        param_space={"x": tune.grid_search([6, 5, 4, 3, 2, 1]), "marker": marker},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                metric="score", mode="max", max_t=4, grace_period=1, reduction_factor=2
            ),
        ),
        run_config=tune.RunConfig(
            name="exp",
            storage_path=str(tmp_path / "ray_results"),
            callbacks=[callback],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    assert grid.num_errors == 1

    def check(expect_failed: bool) -> None:
        runs = _all_runs(uri, exp)
        children = _children(runs, parent)
        assert len(runs) == 1 + len(children) and len(children) == 6
        assert len({c.data.tags["trial_id"] for c in children}) == 6
        assert all(c.info.status != "RUNNING" for c in children)
        stopped = 0
        for child in children:
            steps = _steps(uri, child.info.run_id, "score")
            assert steps == list(range(1, len(steps) + 1)), steps
            assert _steps(uri, child.info.run_id, STEP_KEY) == steps
            assert "config/x" not in child.data.metrics and "pid" not in child.data.metrics
            assert "time_total_s" in child.data.metrics
            if child.data.params["x"] == "6":
                assert child.info.status == ("FAILED" if expect_failed else "FINISHED")
                assert steps == ([1, 2] if expect_failed else [1, 2, 3, 4])
                continue
            assert child.info.status == "FINISHED"
            early = child.data.tags["stopped_early"]
            assert early == ("true" if len(steps) < 4 else "false")
            stopped += early == "true"
        assert stopped >= 1

    check(expect_failed=True)
    failed = next(c for c in _children(_all_runs(uri, exp), parent) if c.data.params["x"] == "6")
    error_txt = MlflowClient(uri).download_artifacts(
        failed.info.run_id, "error.txt", str(tmp_path / "dl")
    )
    assert "planned failure" in Path(error_txt).read_text()

    # Restore in "a new driver": the callback (and its tracker) come back from tuner.pkl.
    tracker_2 = StudyTracker(uri, exp, "study-ray")
    tracker_2.open_study(run_name="ray", params={}, tags={}, texts={})
    tracker_2.close_stale_runs()
    restored = tune.Tuner.restore(
        str(tmp_path / "ray_results" / "exp"), trainable, resume_errored=True
    )
    grid_2 = restored.fit()
    assert grid_2.num_errors == 0
    check(expect_failed=False)
    tracker_2.finish_study("FINISHED")
    assert {r.info.status for r in _all_runs(uri, exp)} == {"FINISHED"}


# -- background delivery --------------------------------------------------------------------


class _SlowClient:
    """Wraps an MlflowClient: every call sleeps ``delay`` s first; records when calls end."""

    def __init__(self, client: MlflowClient, delay: float) -> None:
        self._client = client
        self._delay = delay
        self.ended: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def slowed(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self._delay)
            try:
                return method(*args, **kwargs)
            finally:
                self.ended.append((name, time.monotonic()))

        return slowed


def _slow_down(tracker: StudyTracker, delay: float) -> _SlowClient:
    slow = _SlowClient(tracker._ops._client, delay)
    tracker._ops._client = slow  # type: ignore[assignment]
    return slow


def _wait_until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("fsync", ["append", "delivery"])
def test_background_delivery_returns_at_once_and_lands_exactly_once_across_a_kill(
    tmp_path: Path, store: str, exp: str, fsync: str
) -> None:
    uri = store
    outbox = tmp_path / "outbox.jsonl"
    first = StudyTracker(
        uri, exp, "study-bg", outbox_path=str(outbox), delivery="background", outbox_fsync=fsync
    )
    first.open_study(run_name="s", params={}, tags={}, texts={})
    slow = _slow_down(first, 0.2)
    start = time.monotonic()
    first.trial_run("t1", run_name="t1", params={"x": 1}, tags={})
    assert first.log_result("t1", 1, {"loss": 1.0}) is True
    returned = time.monotonic()
    # The callback path returned before MLflow finished even one (slowed) call.
    assert not slow.ended or returned < slow.ended[0][1]
    assert returned - start < 0.2
    for step in range(2, 7):
        assert first.log_result("t1", step, {"loss": 1.0 / step}) is True
    assert first.log_result("t1", 3, {"loss": 9.0}) is False  # queued already
    first.close_trial("t1", "FINISHED")
    assert first.pending_operations() >= 6
    # "Kill" the driver mid-queue: once some results landed, stop the delivery thread
    # without flushing; the rest stays in the durable outbox.
    _wait_until(lambda: sum(1 for name, _ in slow.ended if name == "log_batch") >= 3)
    first.close(deliver=False)
    left = first.pending_operations()
    assert 0 < left < 8
    assert outbox.exists()

    # A restarted driver on the same outbox lands the rest, each step exactly once, in order:
    # the run existed before its metrics, and it is closed after the last one.
    second = StudyTracker(uri, exp, "study-bg", outbox_path=str(outbox), delivery="background")
    assert second.flush_outbox() is True and second.pending_operations() == 0
    assert not outbox.exists()
    runs = _all_runs(uri, exp)
    parent = next(r for r in runs if r.data.tags.get("role") == "study")
    (child,) = _children(runs, parent.info.run_id)
    assert child.info.status == "FINISHED"
    assert _steps(uri, child.info.run_id, STEP_KEY) == [1, 2, 3, 4, 5, 6]
    history = MlflowClient(uri).get_metric_history(child.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, 7)]

    # Ray resumes the trial and replays epochs 5-6 then goes on: 7 lands once, 5-6 not again.
    second.trial_run("t1", run_name="t1", params={"x": 1}, tags={})
    for step in (5, 6, 7):
        second.log_result("t1", step, {"loss": 1.0 / step})
    second.close_trial("t1", "FINISHED")
    second.finish_study("FINISHED")
    assert second.pending_operations() == 0
    assert _steps(uri, child.info.run_id, STEP_KEY) == [1, 2, 3, 4, 5, 6, 7]
    assert MlflowClient(uri).get_run(child.info.run_id).info.status == "FINISHED"
    second.close()


def test_flush_waits_for_background_delivery_and_tracker_pickles(
    tmp_path: Path, store: str, exp: str
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    tracker = StudyTracker(store, exp, "study-flush", outbox_path=str(outbox))
    assert tracker._config["delivery"] == "background"  # the default with a file outbox
    tracker.open_study(run_name="s", params={}, tags={}, texts={})
    slow = _slow_down(tracker, 0.05)
    tracker.trial_run("t", run_name="t", params={}, tags={})
    for step in (1, 2, 3):
        tracker.log_result("t", step, {"m": float(step)})
    clone = pickle.loads(pickle.dumps(tracker))  # with the delivery thread alive
    assert clone._config["delivery"] == "background" and clone._worker is None
    assert tracker.flush_outbox() is True
    assert tracker.pending_operations() == 0 and not outbox.exists()
    assert any(name == "log_batch" for name, _ in slow.ended)
    (child,) = [r for r in _all_runs(store, exp) if r.data.tags.get("trial_id") == "t"]
    assert _steps(store, child.info.run_id, STEP_KEY) == [1, 2, 3]
    tracker.finish_study("FINISHED")
    tracker.close()


def test_delivery_mode_defaults_and_override(
    tmp_path: Path, store: str, exp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert StudyTracker(store, exp, "s1")._config["delivery"] == "sync"  # in-memory outbox
    monkeypatch.setenv("KDSTUDY_MLFLOW_DELIVERY", "sync")
    on_file = StudyTracker(store, exp, "s2", outbox_path=str(tmp_path / "o.jsonl"))
    assert on_file._config["delivery"] == "sync"
    with pytest.raises(ValueError, match="delivery"):
        StudyTracker(store, exp, "s3", delivery="later")
