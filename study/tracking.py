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
  ``(study_id, role=study)``, a trial's child run by ``(study_id, trial_id, role != study)``
  (``role`` = trial | baseline | final; study/mlflow_ops.py applies every operation). That
  makes "one run per trial" hold across retries, ``Tuner.restore`` and driver restarts.
* Results are keyed by ``(trial_id, step)``: a step already in the run's history of the step
  marker metric :data:`STEP_KEY` is skipped, so re-sent results (a restored trial replaying
  epochs, a replayed outbox) land exactly once.
* Outages: a write that fails because MLflow is unreachable is appended to the durable
  JSON-lines outbox (``study/outbox.py``) and replayed, in order, before the next successful
  write (:meth:`StudyTracker.flush_outbox`). Replays are idempotent thanks to the keys above,
  so a crash in the middle of a replay is harmless. One warning line per outage, not per call.
* Delivery off Ray's event loop (``delivery="background"``, the default with a file outbox):
  the hot-path writes -- :meth:`StudyTracker.trial_run`, ``log_result``, ``close_trial``,
  ``log_trial_text``, ``log_trial_artifact`` -- only append their record to the outbox
  (written at once, so it survives the driver; fsynced by the delivery thread before it is
  delivered, so no disk flush stalls Ray's loop) and wake one delivery thread, which replays the
  outbox in order exactly like an outage replay. So Ray's callback returns in about a
  millisecond instead of waiting for MLflow (a SQLite ``log_batch`` of one result commits
  several transactions). Order holds because there is one journal and one replayer at a time:
  a run is created before its metrics, a trial closed after its last result. The blocking calls
  -- ``open_study``, ``close_stale_runs``, ``finish_study``, ``flush_outbox`` -- first deliver
  everything queued, in the calling thread. ``delivery="sync"`` (the default with an in-memory
  outbox, or ``KDSTUDY_MLFLOW_DELIVERY=sync``) applies every write in the caller, as before.
* Keys and values are checked against MLflow's rules and limits before any write
  (``study/mlflow_sanitize.py``): a bad entry drops itself, warned once, never a whole batch.

This module must not import Ray (it is used by the driver, report scripts and tests alike).
``flatten_params`` is re-exported from ``study/mlflow_sanitize.py`` for its importers.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.exceptions import MlflowException

from study.mlflow_ops import (
    FULL_PARAMS_ARTIFACT,
    ORPHAN_REASON,
    ROLE_BASELINE,
    ROLE_FINAL,
    ROLE_STUDY,
    ROLE_TRIAL,
    RUN_ROLES,
    STEP_KEY,
    TAG_ORPHANED,
    TAG_PARENT_RUN_ID,
    TAG_ROLE,
    TAG_STUDY_ID,
    TAG_TRIAL_ID,
    MlflowOps,
    RunNotFoundError,
)
from study.mlflow_sanitize import check_literal, clean_metrics, flatten_params, str_map
from study.outbox import Outbox

logger = logging.getLogger(__name__)

__all__ = [  # the names other modules import from here (defined in study/mlflow_ops.py)
    "FULL_PARAMS_ARTIFACT",
    "ORPHAN_REASON",
    "ROLE_BASELINE",
    "ROLE_FINAL",
    "ROLE_STUDY",
    "ROLE_TRIAL",
    "RUN_ROLES",
    "STEP_KEY",
    "TAG_ORPHANED",
    "TAG_PARENT_RUN_ID",
    "TAG_ROLE",
    "TAG_STUDY_ID",
    "TAG_TRIAL_ID",
    "TERMINAL_STATUSES",
    "RunNotFoundError",
    "StudyTracker",
    "flatten_params",
]

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})

# HTTP statuses of MlflowException that mean "MLflow is up and rejected this request": retrying
# cannot help, so such an operation is dropped with a warning instead of blocking the outbox.
# Everything else (connection errors are raised as INTERNAL_ERROR = 500, SQLite "database is
# locked" as TEMPORARILY_UNAVAILABLE = 503, rate limits = 429, auth = 401/403) is treated as an
# outage: buffered, never lost.
_PERMANENT_HTTP_STATUSES = frozenset({400, 404, 409})

#: Environment override of the ``delivery`` of trackers created with ``delivery="auto"``.
DELIVERY_ENV = "KDSTUDY_MLFLOW_DELIVERY"
DELIVERY_MODES = ("auto", "background", "sync")
#: Environment default of ``outbox_fsync`` (``append`` | ``delivery``).
OUTBOX_FSYNC_ENV = "KDSTUDY_OUTBOX_FSYNC"


class _DeliveryStopped(Exception):
    """Raised inside a replay of the delivery thread of a tracker being closed: the record and
    the ones after it stay in the outbox (treated like an outage by the replay)."""


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
        delivery: ``"background"`` -- hot-path writes are appended to the outbox and delivered
            by one background thread (see the module docstring); ``"sync"`` -- every write is
            applied in the calling thread; ``"auto"`` (default) -- ``$KDSTUDY_MLFLOW_DELIVERY``
            if set, else background with a file outbox and sync with an in-memory one (without
            a durable journal, queued results would die with the driver).
        outbox_fsync: ``"append"`` -- each outbox line is fsynced before the write returns
            (the default with sync delivery); ``"delivery"`` -- written at once (survives a
            crash of the driver) and fsynced by the delivery thread before it is delivered (a
            machine crash can lose the lines of the last moment not yet fsynced; keeps disk
            latency off Ray's event loop; the default with background delivery). Default
            from ``$KDSTUDY_OUTBOX_FSYNC`` when set.

    The constructor contacts MLflow once to create the experiment; if MLflow is down this is
    deferred to the first successful write. Every public write returns normally during an
    outage. Call the public methods from one thread (Ray calls callbacks from the driver's
    single event loop); the delivery thread is internal.
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
        delivery: str = "auto",
        outbox_fsync: str | None = None,
    ) -> None:
        if delivery == "auto":
            delivery = os.environ.get(DELIVERY_ENV, "").strip() or "auto"
        if delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {list(DELIVERY_MODES)}: {delivery!r}")
        if delivery == "auto":
            delivery = "sync" if outbox_path is None else "background"
        if outbox_fsync is None:
            # the delivery thread fsyncs what it is about to deliver: no disk flush on Ray's
            # event loop (benchmarks/bench_driver.py: p95 8 ms -> 2 ms under disk load)
            default = "delivery" if delivery == "background" else "append"
            outbox_fsync = os.environ.get(OUTBOX_FSYNC_ENV, "").strip() or default
        if outbox_fsync not in ("append", "delivery"):
            raise ValueError(f"outbox_fsync must be 'append' or 'delivery': {outbox_fsync!r}")
        self._config: dict[str, Any] = {
            "tracking_uri": tracking_uri,
            "experiment_name": experiment_name,
            "study_id": check_literal("study_id", study_id),
            "outbox_path": None if outbox_path is None else os.path.abspath(outbox_path),
            "artifact_location": artifact_location or _default_artifact_location(tracking_uri),
            "retry_interval_s": float(retry_interval_s),
            "delivery": delivery,
            "outbox_fsync": outbox_fsync,
        }
        self._init_runtime(experiment_id=None, parent_run_id=None)
        try:
            self._ops.ensure_experiment()
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
            "experiment_id": self._ops.experiment_id,
            "parent_run_id": self._ops.parent_run_id,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._config = dict(state["config"])
        self._config.setdefault("delivery", "sync")  # a tuner.pkl of an older version
        self._config.setdefault("outbox_fsync", "append")
        self._init_runtime(state["experiment_id"], state["parent_run_id"])

    def _init_runtime(self, experiment_id: str | None, parent_run_id: str | None) -> None:
        self._study_id: str = self._config["study_id"]
        self._warned: set[str] = set()
        self._ops = MlflowOps(
            self._config["tracking_uri"],
            self._config["experiment_name"],
            self._study_id,
            artifact_location=self._config["artifact_location"],
            warn_once=self._warn_once,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
        )
        self._outbox = Outbox(
            self._config["outbox_path"],
            fsync_appends=self._config["outbox_fsync"] == "append",
        )
        self._queued_steps: dict[str, set[int]] = {}  # trial_id -> steps waiting in the outbox
        self._in_outage = False
        self._last_failure = -math.inf
        # Threads and locks (never pickled): _apply_lock serialises everything that talks to
        # MLflow (live writes and replays, in either thread); _state_lock guards _queued_steps.
        self._background: bool = self._config["delivery"] == "background"
        self._apply_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._worker: threading.Thread | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        """Id of the study's parent run (``None`` until it exists in MLflow)."""
        return self._ops.parent_run_id

    @property
    def experiment_id(self) -> str | None:
        """Id of the MLflow experiment (``None`` while MLflow was never reachable)."""
        return self._ops.experiment_id

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
        with self._apply_lock:
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

        The run is found by its tags ``(study_id, trial_id, role != study)`` and reused if it
        exists -- exactly one run per trial across retries, ``Tuner.restore`` and driver
        restarts -- else created with ``mlflow.parentRunId`` = the parent run. ``tags`` may set
        ``role`` to one of :data:`RUN_ROLES` (default ``trial``). Params follow the rules of
        :meth:`open_study`. Returns the run id, or ``None`` if queued (outage, or background
        delivery: the run is created by the delivery thread before any later write of the
        trial).
        """
        role = tags.get(TAG_ROLE, ROLE_TRIAL)
        if role not in RUN_ROLES:
            raise ValueError(
                f"{TAG_ROLE} of a trial's run must be one of {list(RUN_ROLES)}: {role!r}"
            )
        record = {
            "op": "trial_run",
            "trial_id": check_literal("trial_id", trial_id),
            "run_name": run_name,
            "params": flatten_params(params),
            "tags": str_map(tags),
        }
        if self._background:
            self._enqueue(record)
            return None
        return self._submit(record)

    def log_result(self, trial_id: str, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one result of a trial at ``step``, exactly once per ``(trial_id, step)``.

        Non-numeric (incl. bool) and non-finite values and invalid MLflow names are dropped
        (warned once per key). :data:`STEP_KEY` is always logged with value ``step``: its
        history is how a restarted driver learns which steps already landed. One ``log_batch``
        per result (split only beyond MLflow's 1000 metrics per batch).

        Returns True if the result was logged (or queued during an outage, or handed to the
        background delivery), False if that step was already logged (or queued) for this
        trial. With background delivery a step that only a previous driver logged is found out
        (and skipped) by the delivery thread, so this returns True for it.
        """
        check_literal("trial_id", trial_id)
        step = int(step)
        if self._step_known(trial_id, step):
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
        if self._background:
            self._enqueue(record)
            return True
        outcome = self._submit(record, on_queue=lambda: self._mark_queued(trial_id, step))
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
        self._write(record)

    def log_trial_text(self, trial_id: str, name: str, text: str) -> None:
        """Log ``text`` as the artifact file ``name`` of a trial's run (e.g. ``error.txt``)."""
        record = {
            "op": "trial_text",
            "trial_id": check_literal("trial_id", trial_id),
            "name": name,
            "text": text,
        }
        self._write(record)

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
        self._write(record)

    def close_stale_runs(self) -> list[str]:
        """Set every RUNNING child run of this study KILLED; return their ids.

        Call on driver start / resume: runs left RUNNING by a killed driver are closed, and a
        trial Ray resumes reopens its run through :meth:`trial_run`. Not queued during an
        outage (returns what was closed so far): :meth:`finish_study` closes leftovers anyway.
        """
        closed: list[str] = []
        with self._apply_lock:
            if not self._flush(force=False):
                return closed
            try:
                for run_id in self._ops.terminate_running_children("KILLED"):
                    closed.append(run_id)
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
        with self._apply_lock:
            self._flush(force=True)
            self._submit(record)
        if self._outbox.pending():
            where = self._outbox.path or "memory (lost at exit)"
            # a file outbox: the caller says how to deliver it (run.py); memory: lost
            logger.log(
                logging.INFO if self._outbox.path else logging.WARNING,
                "MLflow still unreachable at study end; %d operations remain in the outbox %s",
                len(self._outbox.read()),
                where,
            )

    def flush_outbox(self) -> bool:
        """Replay queued writes in order; True when the outbox is empty afterwards.

        Idempotent (runs found by tags, results keyed by ``(trial_id, step)``), so replaying
        the same outbox twice -- or after a crash mid-replay -- lands everything exactly once.
        Called automatically before every write and by :meth:`finish_study`. With background
        delivery it delivers, in the calling thread, everything queued so far (waiting for a
        replay the delivery thread has under way): when it returns True, every earlier write is
        in MLflow.
        """
        with self._apply_lock:
            return self._flush(force=True)

    def pending_operations(self) -> int:
        """How many writes wait in the outbox (0 when everything reached MLflow; with
        background delivery this includes writes the delivery thread has not made yet)."""
        return len(self._outbox.read()) if self._outbox.pending() else 0

    def close(self, *, deliver: bool = True) -> None:
        """Stop the delivery thread, after delivering everything queued if ``deliver``.

        Not needed for correctness: the thread is a daemon and what it has not delivered stays
        in the (file) outbox for the next tracker. ``deliver=False`` stops it after the record
        it is applying, leaving the rest queued (what a killed driver leaves behind).
        """
        if deliver:
            self.flush_outbox()
        self._closing = True
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        self._worker = None

    # -- background delivery -----------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        """A write without a result value: queued for background delivery, or applied now."""
        if self._background:
            self._enqueue(record)
        else:
            self._submit(record)

    def _enqueue(self, record: dict[str, Any]) -> None:
        """Make ``record`` durable in the outbox and wake the delivery thread (no MLflow call)."""
        if self._closing:
            raise RuntimeError("this StudyTracker was closed")
        self._outbox.append(record)
        if record["op"] == "log_result":
            self._mark_queued(record["trial_id"], int(record["step"]))
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._deliver_loop, name=f"mlflow-delivery-{self._study_id}", daemon=True
            )
            self._worker.start()
        self._wake.set()

    def _deliver_loop(self) -> None:
        while not self._closing:
            # During an outage, wake up again after the retry interval even without new writes.
            timeout = self._config["retry_interval_s"] if self._in_outage else None
            self._wake.wait(timeout)
            self._wake.clear()
            if self._closing:
                return
            with self._apply_lock:
                try:
                    self._flush(force=False)
                except Exception:  # never let the thread die: the records stay in the outbox
                    logger.exception("MLflow background delivery failed; retrying later")
                    self._last_failure = time.monotonic()
                    self._in_outage = True

    def _step_known(self, trial_id: str, step: int) -> bool:
        with self._state_lock:
            queued = step in self._queued_steps.get(trial_id, ())
        return queued or self._ops.step_logged(trial_id, step)

    def _mark_queued(self, trial_id: str, step: int) -> None:
        with self._state_lock:
            self._queued_steps.setdefault(trial_id, set()).add(step)

    def _apply_queued(self, record: dict[str, Any]) -> Any:
        """Apply one outbox record; a result leaves the queued steps once it has landed in
        MLflow (its step is then in the confirmed cache) or was dropped -- not on an outage."""
        if self._closing and threading.current_thread() is self._worker:
            raise _DeliveryStopped
        try:
            outcome = self._ops.apply(record)
        except Exception as exc:
            if not _is_outage(exc):
                self._unqueue(record)
            raise
        self._unqueue(record)
        return outcome

    def _unqueue(self, record: dict[str, Any]) -> None:
        if record.get("op") == "log_result":
            with self._state_lock:
                self._queued_steps.get(record["trial_id"], set()).discard(int(record["step"]))

    # -- outbox ----------------------------------------------------------------------------

    def _submit(self, record: dict[str, Any], on_queue: Callable[[], None] | None = None) -> Any:
        """Apply ``record`` now, or queue it behind earlier writes (order is preserved)."""
        if not self._flush(force=False):
            self._queue(record, on_queue)
            return None
        try:
            return self._ops.apply(record)
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
            self._apply_queued,
            is_outage=lambda exc: _is_outage(exc) or isinstance(exc, _DeliveryStopped),
            is_permanent=_is_permanent,
            on_rejected=self._warn_dropped,
        )
        if isinstance(outage, _DeliveryStopped):
            return False
        if outage is not None:
            self._note_failure(outage)
            return False
        # Each replayed result left _queued_steps as it landed (its step is now in the
        # confirmed cache of MlflowOps) or was dropped (_apply_queued).
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
            from study.storage_faults import storage_fault

            # a full or read-only local store is the study's storage fault, which the driver
            # reports in one line of its own (study/storage_faults.py), not an outage
            logger.log(
                logging.INFO if storage_fault(exc) else logging.WARNING,
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
