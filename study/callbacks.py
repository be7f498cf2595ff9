"""Ray Tune callback that forwards trial events to the driver's :class:`StudyTracker`.

Replaces Ray's ``MLflowLoggerCallback`` (wrong for us, spec/platform.md "MLflow 3.17"): this
callback keeps no trial -> run map of its own; the tracker finds runs by tags and dedups results
by ``(trial_id, training_iteration)``, so ``Tuner.restore`` and driver restarts neither
duplicate runs nor leave them RUNNING. It runs in the driver only; trial processes never talk to
MLflow.

Ray pickles the ``RunConfig`` (this callback included) into ``tuner.pkl``; ``Tuner.restore``
brings back an unpickled copy whose tracker reconnects from its configuration
(``StudyTracker.__getstate__``). ``describe`` must therefore be picklable by cloudpickle
(a module-level function or a closure over plain data).

Hook signatures follow ``ray/tune/callback.py`` of Ray 2.60: ``(iteration, trials, trial,
**info)``, plus ``result`` for ``on_trial_result``; ``on_experiment_end(trials, **info)``.
Only ``ray.tune`` is imported (spec/platform.md: Ray's APIs outside ``ray.tune`` moved).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.describe import CONFIG_TAG
from study.integrity import note_staging, sign_staged_state
from study.interrupts import STOP
from study.mlflow_sanitize import is_metric_value
from study.tracking import STEP_KEY, StudyTracker

logger = logging.getLogger(__name__)

#: ``describe(trial_config) -> (run_name, params, tags)``, supplied by the driver. The tag
#: ``CONFIG_TAG``, when present, is not a tag: it is logged as the run's ``config.json``.
Describe = Callable[[dict[str, Any]], tuple[str, dict[str, Any], dict[str, str]]]

#: Ray's bookkeeping entries of a result that are not metrics of the trial. ``training_iteration``
#: (the step) and ``time_total_s`` / ``time_this_iter_s`` (cost per trial/epoch) are kept.
RAY_BOOKKEEPING_KEYS = frozenset(
    {
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "pid",
        "date",
        "hostname",
        "node_ip",
        "config",
        "trial_id",
        "experiment_id",
        "experiment_tag",
        "done",
        "should_checkpoint",
        "checkpoint_dir_name",
        "timestamp",
    }
)

#: Ray trial status -> MLflow run status for trials still open when the experiment ends.
_END_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}
# Cap on an error text logged as artifact (Ray's traceback files are small; this is a guard).
_MAX_ERROR_CHARS = 200_000


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a Ray result without Ray's bookkeeping (``config/*`` etc.).

    bools (``done``, ``should_checkpoint``) are not metrics; the tracker further drops
    non-finite values.
    """
    return {
        key: value
        for key, value in result.items()
        if key not in RAY_BOOKKEEPING_KEYS
        and not key.startswith("config/")
        and is_metric_value(value)
    }


def _error_text(trial: Any) -> str | None:
    """Best-effort text of a trial's last error: Ray's ``get_error()``, else its error file."""
    try:
        error = trial.get_error()
        if error is not None:
            return str(error)[:_MAX_ERROR_CHARS]
    except Exception:  # the error file can live on remote storage; never fail the study here
        logger.debug("trial.get_error() failed for %s", trial, exc_info=True)
    path = getattr(trial, "error_file", None)
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read(_MAX_ERROR_CHARS)
        except OSError:
            pass
    return None


class MLflowStudyCallback(Callback):
    """Mirror trials into MLflow child runs under the study's parent run.

    Args:
        tracker: the driver's :class:`StudyTracker` (``open_study`` already called).
        describe: ``trial_config -> (run_name, params, tags)`` for a trial's child run.
        max_iterations: the planned ``training_iteration`` budget (``max_t`` of ASHA = epochs);
            a trial completing below it is tagged ``stopped_early=true`` (else ``false``), so
            the MLflow UI can filter scheduler-stopped trials. ``None``: no such tag.

    Tracking must never crash the study: the tracker queues writes while MLflow is down, and
    any other error in a hook is logged (with traceback) and swallowed.
    """

    def __init__(
        self,
        tracker: StudyTracker,
        describe: Describe,
        *,
        max_iterations: int | None = None,
        outputs_dir: str | None = None,
    ) -> None:
        self._outputs_dir = outputs_dir
        self._tracker = tracker
        self._describe = describe
        self._max_iterations = max_iterations
        # Trials whose run this driver (re)opened and has not closed yet. Only a cache: after a
        # restore it starts empty and runs are found again by tags.
        self._open: set[str] = set()
        self._last_step: dict[str, int] = {}

    @property
    def tracker(self) -> StudyTracker:
        return self._tracker

    # -- Ray hooks -------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Ensure the trial's child run exists and is RUNNING (reused on retry/restore)."""
        self._guard("on_trial_start", self._ensure_run, trial)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Any],
        trial: Any,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        """Log one result at ``step = result["training_iteration"]`` (deduplicated)."""
        self._guard("on_trial_result", self._log_result, trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """FINISHED; with a scheduler (ASHA) a stopped trial also ends here -> ``stopped_early``."""
        self._guard("on_trial_complete", self._complete, trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A failed trial Ray will retry: keep the run open, keep the error text per attempt."""
        self._guard("on_trial_recover", self._log_error, trial, final=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """FAILED, with Ray's error text as ``error.txt``."""
        self._guard("on_trial_error", self._log_error, trial, final=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Close every run this driver left open (status from Ray's view), flush the outbox."""
        self._guard("on_experiment_end", self._end, trials)

    # -- implementation --------------------------------------------------------------------

    def _guard(self, hook: str, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            from study.storage_faults import storage_fault

            fault = storage_fault(exc)  # a full or read-only disk stops the study, in one line
            if fault is not None:
                STOP.stop_for(fault)
                return
            logger.exception("MLflow tracking failed in %s; the study continues", hook)

    def _ensure_run(self, trial: Any) -> None:
        run_name, params, tags = self._describe(dict(trial.config))
        config_json = tags.pop(CONFIG_TAG, None)
        self._tracker.trial_run(trial.trial_id, run_name=run_name, params=params, tags=tags)
        if config_json is not None and trial.trial_id not in self._open:
            # the whole resolved config beside the run's params (which hold the active values)
            self._tracker.log_trial_text(trial.trial_id, "config.json", config_json)
        self._open.add(trial.trial_id)

    def _log_result(self, trial: Any, result: dict[str, Any]) -> None:
        if trial.trial_id not in self._open:
            # A result without a start seen by this callback instance (e.g. callback restored
            # from tuner.pkl mid-flight): make sure the run exists and is RUNNING.
            self._ensure_run(trial)
        step = int(result[STEP_KEY])
        self._last_step[trial.trial_id] = step
        self._tracker.log_result(trial.trial_id, step, result_metrics(result))

    def _last_iteration(self, trial: Any) -> int | None:
        last = (getattr(trial, "last_result", None) or {}).get(STEP_KEY)
        if last is None:
            last = self._last_step.get(trial.trial_id)
        return None if last is None else int(last)

    #: small per-trial files the loop writes (absolute dir) that go to the run as artifacts;
    #: the weights (best.pt, last.pt) stay in the study directory (tag ``outputs_dir``)
    OUTPUT_FILES = ("per_class.json", "eval_logits.pt", "failure.json", "error.txt")

    def _log_outputs(self, trial: Any) -> None:
        if not self._outputs_dir:
            return
        folder = os.path.join(self._outputs_dir, trial.trial_id)
        for name in self.OUTPUT_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                self._tracker.log_trial_artifact(trial.trial_id, path, "outputs")

    def _complete(self, trial: Any) -> None:
        self._log_outputs(trial)
        tags: dict[str, str] = {}
        last = self._last_iteration(trial)
        if self._max_iterations is not None and last is not None:
            tags["stopped_early"] = "true" if last < self._max_iterations else "false"
        self._tracker.close_trial(trial.trial_id, "FINISHED", tags=tags)
        self._open.discard(trial.trial_id)

    def _log_error(self, trial: Any, *, final: bool) -> None:
        text = _error_text(trial)
        if trial.trial_id not in self._open:
            # failed before its start reached this callback (e.g. its worker was killed while
            # starting): the run must exist before the error is logged to it
            self._ensure_run(trial)
        if final:
            self._log_outputs(trial)
            if text:
                self._tracker.log_trial_text(trial.trial_id, "error.txt", text)
            self._tracker.close_trial(trial.trial_id, "FAILED")
            self._open.discard(trial.trial_id)
        elif text:
            attempt = int(getattr(trial, "num_failures", 0) or 0)
            self._tracker.log_trial_text(trial.trial_id, f"errors/attempt_{attempt}.txt", text)

    def _end(self, trials: list[Any]) -> None:
        for trial in trials:
            if trial.trial_id in self._open:
                status = _END_STATUS.get(str(trial.status), "KILLED")
                if STOP.interrupted and status == "FINISHED":
                    # Ray marks the trials it stops on a signal TERMINATED: cut short, not done
                    status = "KILLED"
                self._tracker.close_trial(trial.trial_id, status)
                self._open.discard(trial.trial_id)
        self._tracker.flush_outbox()


class StateSigningCallback(Callback):
    """Signs, as the driver writes them, the files Ray unpickles on restore
    (``study/integrity.py``): the experiment and searcher state and the trials'
    ``error.pkl`` in Ray's local staging directory at each save (``get_state`` runs right
    after Ray wrote its state there, before the folder is copied to the study directory).

    Reaches into ``trial.storage`` (Ray's StorageContext) for the staging path: Ray
    offers no public accessor; the kill-and-resume test fails if the attribute moves.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._staging: Path | None = None

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._staging is None and trials:
            storage = trials[0].storage
            self._staging = Path(storage.experiment_driver_staging_path)
            # a disk that fills while Ray copies its state leaves it torn: --resume can
            # then restore it from the staging copy (which it verifies first)
            note_staging(Path(storage.experiment_fs_path), self._staging)

    def get_state(self) -> dict[str, Any] | None:
        if self._staging is not None and self._staging.is_dir():
            sign_staged_state(self._staging, self._key)
        return None  # stateless: Ray writes no callback pickle


class StorageGuard(Callback):
    """Probes the study directory after every trial error or recovery and every ``every``
    seconds while trials run; a fault stops the study (:data:`study.interrupts.STOP`)."""

    def __init__(self, folder: str | os.PathLike[str], every: float = 10.0) -> None:
        self.folder, self.every = Path(folder), every
        self._last = time.monotonic()

    def _check(self) -> None:
        self._last = time.monotonic()
        if STOP.stopping:
            return
        from study.storage_faults import probe

        fault = probe(self.folder)
        if fault is not None:
            STOP.stop_for(fault)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last >= self.every:
            self._check()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check()

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check()
