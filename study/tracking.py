"""MLflow tracking of a study: the driver is the single, idempotent writer.

Why not Ray's ``MLflowLoggerCallback`` (spec/platform.md, "MLflow 3.17"): it keeps its
trial -> run map in memory, so ``Tuner.restore`` gives every resumed trial a second run and a
killed driver leaves runs RUNNING forever; ``mlflow.set_experiment`` exports
``MLFLOW_EXPERIMENT_ID``, which silently overrides the experiment of later studies; and several
trial processes opening a fresh SQLite store at once crash in its schema migration.

So here:

* Only the driver writes. Trial processes never touch MLflow; the Ray callback
  (``study/callbacks.py``) forwards results to a :class:`StudyTracker` living in the driver.
* Every call goes through an explicit ``MlflowClient(tracking_uri)`` -- never the fluent API,
  ``set_experiment`` or environment variables -- so several studies (or tests) in one process
  do not interfere.
* Runs are found again by tags, never by ids remembered in memory or checkpoints: the parent by
  ``(study_id, role=study)``, a trial's child run by ``(study_id, role=trial, trial_id)``. That
  makes "one run per trial" hold across retries, ``Tuner.restore`` and driver restarts.
* Results are keyed by ``(trial_id, step)``: a step already in the run's history of the step
  marker metric :data:`STEP_KEY` is skipped, so re-sent results (a restored trial replaying
  epochs, a replayed outbox) land exactly once.
* Outages: a write that fails because MLflow is unreachable is appended to the durable
  JSON-lines outbox (``study/outbox.py``) and replayed, in order, before the next successful
  write (:meth:`StudyTracker.flush_outbox`). Replays are idempotent thanks to the keys above,
  so a crash in the middle of a replay is harmless. One warning line per outage, not per call.
* Keys and values are checked against MLflow's rules and limits before any write
  (``study/mlflow_sanitize.py``): a bad entry drops itself, warned once, never a whole batch.

This module must not import Ray (it is used by the driver, report scripts and tests alike).
``flatten_params`` is re-exported from ``study/mlflow_sanitize.py`` for its importers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from study.mlflow_sanitize import (
    check_literal,
    clean_metrics,
    clip_params,
    clip_tags,
    flatten_params,
    params_truncated,
    str_map,
)
from study.outbox import Outbox

logger = logging.getLogger(__name__)

#: Metric logged with every result (value = step). Its history tells a restarted driver which
#: steps of a run already landed. Same name as Ray's counter, the unit ASHA/PBT count in.
STEP_KEY = "training_iteration"
#: Tags identifying our runs (searchable in the MLflow UI as ``tags.study_id = '...'``).
TAG_STUDY_ID = "study_id"
TAG_ROLE = "run_kind"  # internal lookup key ("study" | "trial"); "role" is the caller's
TAG_TRIAL_ID = "trial_id"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
TAG_ORPHANED = "orphaned"
ORPHAN_REASON = (
    "the driver was killed before Ray saved this trial; the resumed study does not contain it"
)
#: MLflow's own nesting tag (``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``); setting it at
#: creation nests the child under the parent in the UI without any fluent ``start_run``.
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
#: Text artifact holding the full parameters of a run when one value had to be truncated.
FULL_PARAMS_ARTIFACT = "params_full.json"
TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})

# HTTP statuses of MlflowException that mean "MLflow is up and rejected this request": retrying
# cannot help, so such an operation is dropped with a warning instead of blocking the outbox.
# Everything else (connection errors are raised as INTERNAL_ERROR = 500, SQLite "database is
# locked" as TEMPORARILY_UNAVAILABLE = 503, rate limits = 429, auth = 401/403) is treated as an
# outage: buffered, never lost.
_PERMANENT_HTTP_STATUSES = frozenset({400, 404, 409})
# search_runs page size (the SQL and REST stores accept up to 50000; 1000 keeps pages small).
_SEARCH_PAGE = 1000


class RunNotFoundError(LookupError):
    """A trial has no child run (``trial_run`` was never called for it in this study)."""


def _is_permanent(exc: BaseException) -> bool:
    """True for errors retrying cannot fix (bad request, missing run or local file)."""
    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() in _PERMANENT_HTTP_STATUSES
    return isinstance(exc, RunNotFoundError | FileNotFoundError)


def _is_outage(exc: BaseException) -> bool:
    """True for errors that mean MLflow (server or database) is unreachable right now."""
    if isinstance(exc, MlflowException):
        return not _is_permanent(exc)
    # Raw network errors can escape the REST client (e.g. during artifact uploads).
    return isinstance(exc, requests.RequestException | ConnectionError | TimeoutError)


def _default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact root for a new experiment: ``<dir of the SQLite file>/mlartifacts``.

    MLflow's default for a SQLite store is ``./mlruns`` relative to the *current directory*,
    which scatters artifacts wherever the driver (or a test) happens to run. For server URIs the
    server decides (``None``).
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db_path = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    return (Path(db_path).resolve().parent / "mlartifacts").as_uri()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StudyTracker:
    """The MLflow writer of one study: parent run, one child run per trial, metrics, outbox.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/study/mlflow.db`` or ``http://host:5000``.
        experiment_name: MLflow experiment, created if missing.
        study_id: stable id of the study (the driver derives it from the study directory);
            tagged ``study_id`` on every run, which is how runs are found again on resume.
        outbox_path: JSON-lines file for writes made while MLflow is unreachable. ``None`` keeps
            them in memory only (lost if the driver dies; fine for tests and throw-away studies).
        artifact_location: artifact root of a *new* experiment; default: see
            :func:`_default_artifact_location`.
        retry_interval_s: during an outage, how long writes go straight to the outbox before
            MLflow is tried again. 30 s bounds the stall of the driver's event loop (each failed
            attempt can block up to MLflow's HTTP timeout x retries; set
            ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` low in the driver's environment).
            An explicit :meth:`flush_outbox` always tries.

    The constructor contacts MLflow once to create the experiment; if MLflow is down this is
    deferred to the first successful write. Every public write returns normally during an
    outage. Not thread-safe: Ray calls callbacks from the driver's single event loop.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        study_id: str,
        outbox_path: str | None = None,
        *,
        artifact_location: str | None = None,
        retry_interval_s: float = 30.0,
    ) -> None:
        self._config: dict[str, Any] = {
            "tracking_uri": tracking_uri,
            "experiment_name": experiment_name,
            "study_id": check_literal("study_id", study_id),
            "outbox_path": None if outbox_path is None else os.path.abspath(outbox_path),
            "artifact_location": artifact_location or _default_artifact_location(tracking_uri),
            "retry_interval_s": float(retry_interval_s),
        }
        self._init_runtime(experiment_id=None, parent_run_id=None)
        try:
            self._ensure_experiment()
        except Exception as exc:
            if not _is_outage(exc):
                raise
            self._note_failure(exc)

    # -- pickling --------------------------------------------------------------------------
    # Ray pickles the RunConfig -- with our callback and this tracker -- into tuner.pkl and
    # Tuner.restore() unpickles it in the next driver. A client holds DB engines and HTTP
    # sessions, so only the configuration travels; caches are rebuilt from tags and histories.

    def __getstate__(self) -> dict[str, Any]:
        return {
            "config": dict(self._config),
            "experiment_id": self._experiment_id,
            "parent_run_id": self._parent_run_id,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._config = dict(state["config"])
        self._init_runtime(state["experiment_id"], state["parent_run_id"])

    def _init_runtime(self, experiment_id: str | None, parent_run_id: str | None) -> None:
        self._client = MlflowClient(tracking_uri=self._config["tracking_uri"])
        self._study_id: str = self._config["study_id"]
        self._outbox = Outbox(self._config["outbox_path"])
        self._experiment_id = experiment_id
        self._parent_run_id = parent_run_id
        self._runs: dict[str, str] = {}  # trial_id -> run id (cache; truth is the tags)
        self._steps: dict[str, set[int]] = {}  # trial_id -> steps confirmed in MLflow
        self._queued_steps: dict[str, set[int]] = {}  # trial_id -> steps waiting in the outbox
        self._in_outage = False
        self._last_failure = -math.inf
        self._warned: set[str] = set()

    # -- properties ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """Id of the study's parent run (``None`` until it exists in MLflow)."""
        return self._parent_run_id

    @property
    def experiment_id(self) -> str | None:
        """Id of the MLflow experiment (``None`` while MLflow was never reachable)."""
        return self._experiment_id

    @property
    def study_id(self) -> str:
        return self._study_id

    @property
    def tracking_uri(self) -> str:
        return str(self._config["tracking_uri"])

    # -- public writes ---------------------------------------------------------------------

    def open_study(
        self,
        *,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        texts: dict[str, str],
    ) -> str | None:
        """Create the parent run of the study, or reopen it (set RUNNING) on resume.

        ``params`` may be nested; they are flattened (``a.b.c``), stringified and truncated to
        MLflow's ``MAX_PARAM_VAL_LENGTH`` (6000 in MLflow 3.17); when one is truncated the full
        set is logged as the text artifact ``params_full.json``. MLflow params are immutable:
        on resume only params not yet present are logged (a changed value is kept as it was,
        with a warning). ``texts`` (``{"spec.yaml": ..., "space.json": ...}``) are logged with
        ``log_text`` (overwritten on resume).

        Returns the parent run id, or ``None`` if MLflow is unreachable (queued in the outbox).
        """
        record = {
            "op": "open_study",
            "run_name": run_name,
            "params": flatten_params(params),
            "tags": str_map(tags),
            "texts": dict(texts),
        }
        return self._submit(record)

    def trial_run(
        self,
        trial_id: str,
        *,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> str | None:
        """Ensure the child run of one trial (nested under the parent) and mark it RUNNING.

        The run is found by its tags ``(study_id, role=trial, trial_id)`` and reused if it
        exists -- exactly one run per trial across retries, ``Tuner.restore`` and driver
        restarts -- else created with ``mlflow.parentRunId`` = the parent run. Params follow
        the rules of :meth:`open_study`. Returns the run id, or ``None`` if queued (outage).
        """
        record = {
            "op": "trial_run",
            "trial_id": check_literal("trial_id", trial_id),
            "run_name": run_name,
            "params": flatten_params(params),
            "tags": str_map(tags),
        }
        return self._submit(record)

    def log_result(self, trial_id: str, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one result of a trial at ``step``, exactly once per ``(trial_id, step)``.

        Non-numeric (incl. bool) and non-finite values and invalid MLflow names are dropped
        (warned once per key). :data:`STEP_KEY` is always logged with value ``step``: its
        history is how a restarted driver learns which steps already landed. One ``log_batch``
        per result (split only beyond MLflow's 1000 metrics per batch).

        Returns True if the result was logged (or queued during an outage), False if that step
        was already logged (or queued) for this trial.
        """
        check_literal("trial_id", trial_id)
        step = int(step)
        if step in self._queued_steps.get(trial_id, ()) or step in self._steps.get(trial_id, ()):
            return False
        clean = clean_metrics(metrics, self._warn_once)
        clean[STEP_KEY] = float(step)
        record = {
            "op": "log_result",
            "trial_id": trial_id,
            "step": step,
            # The timestamp is fixed now so a replayed result keeps its real time (and the SQL
            # store treats an exact re-insert of (key, value, timestamp, step) as a no-op).
            "timestamp": int(time.time() * 1000),
            "metrics": clean,
        }
        outcome = self._submit(
            record, on_queue=lambda: self._queued_steps.setdefault(trial_id, set()).add(step)
        )
        return outcome is not False

    def close_trial(
        self, trial_id: str, status: str, *, tags: dict[str, str] | None = None
    ) -> None:
        """Terminate a trial's child run with ``status`` (FINISHED | FAILED | KILLED).

        ``tags`` (e.g. ``stopped_early``) are set before terminating. Idempotent.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TERMINAL_STATUSES)}: {status!r}")
        record = {
            "op": "close_trial",
            "trial_id": check_literal("trial_id", trial_id),
            "status": status,
            "tags": str_map(tags),
        }
        self._submit(record)

    def log_trial_text(self, trial_id: str, name: str, text: str) -> None:
        """Log ``text`` as the artifact file ``name`` of a trial's run (e.g. ``error.txt``)."""
        record = {
            "op": "trial_text",
            "trial_id": check_literal("trial_id", trial_id),
            "name": name,
            "text": text,
        }
        self._submit(record)

    def log_trial_artifact(
        self, trial_id: str, local_path: str, artifact_path: str | None = None
    ) -> None:
        """Upload a local file or directory to a trial's run.

        The path is made absolute now (trial directories are temporary and relative paths
        mean nothing in a replay); if it is gone by the time an outbox replays it, the upload is
        dropped with a warning.
        """
        record = {
            "op": "trial_artifact",
            "trial_id": check_literal("trial_id", trial_id),
            "local_path": os.path.abspath(local_path),
            "artifact_path": artifact_path,
        }
        self._submit(record)

    def close_stale_runs(self) -> list[str]:
        """Set every RUNNING child run of this study KILLED; return their ids.

        Call on driver start / resume: runs left RUNNING by a killed driver are closed, and a
        trial Ray resumes reopens its run through :meth:`trial_run`. Not queued during an
        outage (returns what was closed so far): :meth:`finish_study` closes leftovers anyway.
        """
        closed: list[str] = []
        if not self._flush(force=False):
            return closed
        try:
            for run in self._search_runs(role=ROLE_TRIAL, status="RUNNING"):
                self._client.set_terminated(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
        except Exception as exc:
            if not _is_outage(exc):
                raise
            self._note_failure(exc)
        return closed

    def finish_study(
        self,
        status: str,
        *,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        texts: dict[str, str] | None = None,
        known_trials: Iterable[str] | None = None,
    ) -> None:
        """Flush the outbox, log the study's summary and terminate the parent with ``status``.

        Any child run still RUNNING is terminated too: FINISHED if ``status`` is FINISHED,
        else KILLED. With ``known_trials`` (every trial id the finished study has), a child
        run of any other trial is retired: tagged ``orphaned``, set KILLED and soft-deleted
        (``mlflow runs restore`` brings it back). Such a run exists when a driver was killed
        after a trial started but before Ray saved that trial in its experiment state: the
        resumed study never sees the trial again and the searcher proposes a new one. If MLflow
        is unreachable this is queued like any write; the outbox file
        then holds the rest and the next tracker on it (e.g. the next driver start) lands it.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(TERMINAL_STATUSES)}: {status!r}")
        record = {
            "op": "finish_study",
            "status": status,
            "timestamp": int(time.time() * 1000),
            "metrics": clean_metrics(metrics or {}, self._warn_once),
            "tags": str_map(tags),
            "texts": dict(texts or {}),
            "known_trials": None if known_trials is None else sorted(set(known_trials)),
        }
        self._flush(force=True)
        self._submit(record)
        if self._outbox.pending():
            where = self._outbox.path or "memory (lost at exit)"
            logger.warning(
                "MLflow still unreachable at study end; %d operations remain in the outbox %s",
                len(self._outbox.read()),
                where,
            )

    def flush_outbox(self) -> bool:
        """Replay queued writes in order; True when the outbox is empty afterwards.

        Idempotent (runs found by tags, results keyed by ``(trial_id, step)``), so replaying
        the same outbox twice -- or after a crash mid-replay -- lands everything exactly once.
        Called automatically before every write and by :meth:`finish_study`.
        """
        return self._flush(force=True)

    # -- outbox ----------------------------------------------------------------------------

    def _submit(self, record: dict[str, Any], on_queue: Callable[[], None] | None = None) -> Any:
        """Apply ``record`` now, or queue it behind earlier writes (order is preserved)."""
        if not self._flush(force=False):
            self._queue(record, on_queue)
            return None
        try:
            return self._apply(record)
        except Exception as exc:
            if _is_outage(exc):
                self._note_failure(exc)
                self._queue(record, on_queue)
                return None
            if _is_permanent(exc):
                self._warn_dropped(record, exc)
                return None
            raise

    def _queue(self, record: dict[str, Any], on_queue: Callable[[], None] | None) -> None:
        self._outbox.append(record)
        if on_queue is not None:
            on_queue()

    def _flush(self, *, force: bool) -> bool:
        """Replay the outbox; False if MLflow is (still) down and records remain."""
        if not self._outbox.pending():
            return True
        if not force and time.monotonic() - self._last_failure < self._config["retry_interval_s"]:
            return False
        replayed, outage = self._outbox.replay(
            self._apply,
            is_outage=_is_outage,
            is_permanent=_is_permanent,
            on_rejected=self._warn_dropped,
        )
        if outage is not None:
            self._note_failure(outage)
            return False
        # Queued steps have either landed or been dropped; forget the confirmed-steps caches of
        # those trials so the next log_result reloads the truth from MLflow.
        for trial_id in self._queued_steps:
            self._steps.pop(trial_id, None)
        self._queued_steps.clear()
        if self._in_outage:
            logger.warning(
                "MLflow at %s reachable again: replayed %d queued operations",
                self.tracking_uri,
                replayed,
            )
        self._in_outage = False
        return True

    def _note_failure(self, exc: BaseException) -> None:
        self._last_failure = time.monotonic()
        if not self._in_outage:
            self._in_outage = True
            logger.warning(
                "MLflow at %s unreachable (%s: %s); queueing writes in %s, retrying every %.0f s",
                self.tracking_uri,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                self._outbox.where,
                self._config["retry_interval_s"],
            )

    def _warn_dropped(self, record: dict[str, Any], exc: BaseException) -> None:
        logger.warning(
            "MLflow rejected %s (trial %s): %s -- dropped",
            record.get("op"),
            record.get("trial_id", "-"),
            str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
        )

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # -- operations (each idempotent; used live and by the outbox replay) -----------------

    def _apply(self, record: dict[str, Any]) -> Any:
        op = record["op"]
        if op == "open_study":
            return self._apply_open_study(record)
        if op == "trial_run":
            return self._apply_trial_run(record)
        if op == "log_result":
            return self._apply_log_result(record)
        if op == "close_trial":
            return self._apply_close_trial(record)
        if op == "trial_text":
            run_id = self._trial_run_id(record["trial_id"])
            return self._client.log_text(run_id, record["text"], record["name"])
        if op == "trial_artifact":
            run_id = self._trial_run_id(record["trial_id"])
            if not os.path.exists(record["local_path"]):
                raise FileNotFoundError(record["local_path"])
            if os.path.isdir(record["local_path"]):
                return self._client.log_artifacts(
                    run_id, record["local_path"], record["artifact_path"]
                )
            return self._client.log_artifact(run_id, record["local_path"], record["artifact_path"])
        if op == "finish_study":
            return self._apply_finish_study(record)
        raise ValueError(f"unknown outbox operation {op!r}")

    def _apply_open_study(self, record: dict[str, Any]) -> str:
        experiment_id = self._ensure_experiment()
        tags = {
            "role": ROLE_STUDY,
            **record["tags"],
            TAG_STUDY_ID: self._study_id,
            TAG_ROLE: ROLE_STUDY,
        }
        run_id = self._create_or_reopen(
            self._find_run(role=ROLE_STUDY), experiment_id, record["run_name"], tags
        )
        self._log_params(run_id, record["params"], self._existing_params)
        for name, text in record["texts"].items():
            self._client.log_text(run_id, text, name)
        self._parent_run_id = run_id
        return run_id

    def _apply_trial_run(self, record: dict[str, Any]) -> str:
        trial_id = record["trial_id"]
        parent_id = self._require_parent()
        tags = {
            "role": ROLE_TRIAL,  # the caller may say "baseline"
            **record["tags"],
            TAG_STUDY_ID: self._study_id,
            TAG_ROLE: ROLE_TRIAL,
            TAG_TRIAL_ID: trial_id,
            TAG_PARENT_RUN_ID: parent_id,
        }
        cached = self._runs.get(trial_id)
        run = self._client.get_run(cached) if cached else self._find_run(ROLE_TRIAL, trial_id)
        run_id = self._create_or_reopen(run, self._ensure_experiment(), record["run_name"], tags)
        self._log_params(run_id, record["params"], self._existing_params)
        self._runs[trial_id] = run_id
        return run_id

    def _create_or_reopen(
        self, run: Any, experiment_id: str, run_name: str, tags: dict[str, str]
    ) -> str:
        """Create the run, or set an existing one RUNNING again with refreshed tags.
        Leaves its already-logged params in ``self._existing_params`` (params are immutable)."""
        if run is None:
            run = self._client.create_run(
                experiment_id, run_name=run_name, tags=self._clip_tags(tags)
            )
            self._existing_params: dict[str, str] = {}
            return run.info.run_id
        self._existing_params = dict(run.data.params)
        if run.info.status != "RUNNING":
            self._client.update_run(run.info.run_id, status="RUNNING")
        self._log_tags(run.info.run_id, tags)
        return run.info.run_id

    def _apply_log_result(self, record: dict[str, Any]) -> bool:
        trial_id, step = record["trial_id"], int(record["step"])
        run_id = self._trial_run_id(trial_id)
        steps = self._logged_steps(trial_id, run_id)
        if step in steps:
            return False
        metrics = [
            Metric(key, float(value), int(record["timestamp"]), step)
            for key, value in record["metrics"].items()
            if key != STEP_KEY
        ]
        # The step marker goes last: if a >1000-metric result is split and fails midway, the
        # step is not marked done and the replay re-sends it.
        metrics.append(Metric(STEP_KEY, float(step), int(record["timestamp"]), step))
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=chunk, synchronous=True)
        steps.add(step)
        return True

    def _apply_close_trial(self, record: dict[str, Any]) -> None:
        run_id = self._trial_run_id(record["trial_id"])
        if record["tags"]:
            self._log_tags(run_id, record["tags"])
        self._client.set_terminated(run_id, record["status"])

    def _apply_finish_study(self, record: dict[str, Any]) -> None:
        parent_id = self._require_parent()
        if record["metrics"]:
            metrics = [
                Metric(k, float(v), int(record["timestamp"]), 0)
                for k, v in record["metrics"].items()
            ]
            for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
                self._client.log_batch(parent_id, metrics=chunk, synchronous=True)
        if record["tags"]:
            self._log_tags(parent_id, record["tags"])
        for name, text in record["texts"].items():
            self._client.log_text(parent_id, text, name)
        known = record.get("known_trials")
        if known is not None:
            self._retire_orphans(set(known))
        child_status = "FINISHED" if record["status"] == "FINISHED" else "KILLED"
        for run in self._search_runs(role=ROLE_TRIAL, status="RUNNING"):
            self._client.set_terminated(run.info.run_id, child_status)
        self._client.set_terminated(parent_id, record["status"])

    def _retire_orphans(self, known: set[str]) -> None:
        for run in self._search_runs(role=ROLE_TRIAL):
            trial_id = run.data.tags.get(TAG_TRIAL_ID)
            if trial_id in known:
                continue
            run_id = run.info.run_id
            self._client.set_tag(run_id, TAG_ORPHANED, ORPHAN_REASON)
            if run.info.status == "RUNNING":
                self._client.set_terminated(run_id, "KILLED")
            self._client.delete_run(run_id)
            self._runs.pop(str(trial_id), None)
            logger.warning(
                "retired MLflow run %s of trial %s: not part of the finished study (%s)",
                run_id,
                trial_id,
                ORPHAN_REASON,
            )

    # -- helpers ---------------------------------------------------------------------------

    def _ensure_experiment(self) -> str:
        """Get or create the experiment; tolerate another process creating it concurrently."""
        if self._experiment_id is not None:
            return self._experiment_id
        name = self._config["experiment_name"]
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                self._experiment_id = self._client.create_experiment(
                    name, artifact_location=self._config["artifact_location"]
                )
                return self._experiment_id
            except MlflowException:
                # Lost the create race (RESOURCE_ALREADY_EXISTS): the winner's experiment is
                # what we want. Anything else re-raises below when the get still finds nothing.
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"MLflow experiment {name!r} is deleted; restore it or choose another name"
            )
        self._experiment_id = experiment.experiment_id
        return self._experiment_id

    def _search_runs(
        self, role: str, trial_id: str | None = None, status: str | None = None
    ) -> list[Run]:
        """All active runs of this study with ``role`` (and ``trial_id``/``status``), oldest
        first, following pagination."""
        clauses = [f"tags.{TAG_STUDY_ID} = '{self._study_id}'", f"tags.{TAG_ROLE} = '{role}'"]
        if trial_id is not None:
            clauses.append(f"tags.{TAG_TRIAL_ID} = '{trial_id}'")
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self._client.search_runs(
                [self._ensure_experiment()],
                filter_string=" AND ".join(clauses),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=_SEARCH_PAGE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _find_run(self, role: str, trial_id: str | None = None) -> Run | None:
        runs = self._search_runs(role=role, trial_id=trial_id)
        if len(runs) > 1:
            # Only possible if two drivers raced on the same study; use the oldest, consistently.
            self._warn_once(
                f"dup:{role}:{trial_id}",
                "study %s has %d %s runs for trial %s; using the oldest",
                self._study_id,
                len(runs),
                role,
                trial_id,
            )
        return runs[0] if runs else None

    def _require_parent(self) -> str:
        if self._parent_run_id is None:
            run = self._find_run(role=ROLE_STUDY)
            if run is None:
                raise RuntimeError("no parent run for this study: call open_study() first")
            self._parent_run_id = run.info.run_id
        return self._parent_run_id

    def _trial_run_id(self, trial_id: str) -> str:
        run_id = self._runs.get(trial_id)
        if run_id is None:
            run = self._find_run(ROLE_TRIAL, trial_id)
            if run is None:
                raise RunNotFoundError(f"trial {trial_id} has no run: call trial_run() first")
            run_id = self._runs[trial_id] = run.info.run_id
        return run_id

    def _logged_steps(self, trial_id: str, run_id: str) -> set[int]:
        """Steps of ``trial_id`` already in MLflow; loaded once from the marker's history."""
        steps = self._steps.get(trial_id)
        if steps is None:
            history = self._client.get_metric_history(run_id, STEP_KEY)
            steps = self._steps[trial_id] = {int(m.step) for m in history}
        return steps

    def _clip_tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        return clip_tags(tags, self._warn_once, exempt=(TAG_PARENT_RUN_ID,))

    def _log_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, v) for k, v in self._clip_tags(tags).items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, tags=chunk, synchronous=True)

    def _log_params(
        self, run_id: str, flat: Mapping[str, str], existing: Mapping[str, str]
    ) -> None:
        """Log the params missing from ``existing`` (params are immutable in MLflow)."""
        todo: list[Param] = []
        for key, clipped in clip_params(flat, self._warn_once).items():
            if key in existing:
                if existing[key] != clipped:
                    self._warn_once(
                        f"changed:{run_id}:{key}",
                        "param %r of run %s changed on resume (%r -> %r); MLflow params are "
                        "immutable, keeping the first value",
                        key,
                        run_id,
                        existing[key][:80],
                        clipped[:80],
                    )
                continue
            todo.append(Param(key, clipped))
        if params_truncated(flat):
            self._client.log_text(
                run_id, json.dumps(dict(flat), indent=2, sort_keys=True), FULL_PARAMS_ARTIFACT
            )
        for chunk in _chunks(todo, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk, synchronous=True)
