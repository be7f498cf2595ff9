"""The idempotent MLflow operations that apply one tracking record.

:class:`study.tracking.StudyTracker` turns each public write into a JSON-able *record*
(``{"op": "trial_run", ...}``) and either applies it now or queues it in the outbox.
:class:`MlflowOps` is what applies it -- live, or during an outbox replay -- and every operation
is idempotent, so a record applied twice (a replay after a crash mid-replay) lands once:

* runs are found by tags, never by ids remembered elsewhere: the parent by
  ``(study_id, role=study)``, the run of a trial by ``(study_id, trial_id, role != study)`` --
  ``role`` is ``trial``, ``baseline`` or ``final`` there, all found the same way;
* a result whose step is already in the history of :data:`STEP_KEY` is skipped;
* MLflow params are immutable: only params not yet on a run are logged.

Only an explicit ``MlflowClient(tracking_uri)`` is used (no fluent API, no environment). Errors
propagate; whether one is an outage (queue) or a rejection (drop) is the tracker's decision.
This module must not import Ray.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from study.mlflow_sanitize import clip_params, clip_tags, params_truncated

logger = logging.getLogger("study.tracking")  # one logger name for the whole MLflow writer

#: Metric logged with every result (value = step). Its history tells a restarted driver which
#: steps of a run already landed. Same name as Ray's counter, the unit ASHA/PBT count in.
STEP_KEY = "training_iteration"
#: Tags identifying our runs (searchable in the MLflow UI as ``tags.study_id = '...'``).
TAG_STUDY_ID = "study_id"
#: What a run is: :data:`ROLE_STUDY` for the parent, else one of :data:`RUN_ROLES`.
TAG_ROLE = "role"
TAG_TRIAL_ID = "trial_id"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
ROLE_BASELINE = "baseline"
ROLE_FINAL = "final"
#: The roles of a child run (one per trial id; found by ``trial_id`` and ``role != study``).
RUN_ROLES = (ROLE_TRIAL, ROLE_BASELINE, ROLE_FINAL)
TAG_ORPHANED = "orphaned"
ORPHAN_REASON = (
    "the driver was killed before Ray saved this trial; the resumed study does not contain it"
)
#: MLflow's own nesting tag (``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``); setting it at
#: creation nests the child under the parent in the UI without any fluent ``start_run``.
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
#: Text artifact holding the full parameters of a run when one value had to be truncated.
FULL_PARAMS_ARTIFACT = "params_full.json"

# search_runs page size (the SQL and REST stores accept up to 50000; 1000 keeps pages small).
_SEARCH_PAGE = 1000

WarnOnce = Callable[..., None]


class RunNotFoundError(LookupError):
    """A trial has no child run (``trial_run`` was never called for it in this study)."""


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowOps:
    """Applies tracking records to MLflow for one study; caches what it learned from MLflow.

    Args:
        tracking_uri, experiment_name, study_id, artifact_location: as for the tracker.
        warn_once: ``warn_once(key, message, *args)``, the tracker's once-per-key warning.
        experiment_id, parent_run_id: known ids (after unpickling a tracker), else ``None``:
            they are looked up (or created) on first use.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        study_id: str,
        *,
        artifact_location: str | None,
        warn_once: WarnOnce,
        experiment_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_name = experiment_name
        self._study_id = study_id
        self._artifact_location = artifact_location
        self._warn_once = warn_once
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._runs: dict[str, str] = {}  # trial_id -> run id (cache; truth is the tags)
        self._steps: dict[str, set[int]] = {}  # trial_id -> steps confirmed in MLflow

    # -- what the tracker asks -------------------------------------------------------------

    def step_logged(self, trial_id: str, step: int) -> bool:
        """True if ``step`` of ``trial_id`` is known (from this process) to be in MLflow."""
        return step in self._steps.get(trial_id, ())

    def forget_steps(self, trial_ids: Iterable[str]) -> None:
        """Drop the confirmed-steps cache of these trials (reloaded from MLflow when needed)."""
        for trial_id in trial_ids:
            self._steps.pop(trial_id, None)

    def terminate_running_children(self, status: str) -> Iterator[str]:
        """Terminate every RUNNING child run of the study with ``status``, yielding each id
        once it is terminated (so a caller interrupted by an outage knows what was done)."""
        for run in self._search_runs(children=True, status="RUNNING"):
            self._client.set_terminated(run.info.run_id, status)
            yield run.info.run_id

    def apply(self, record: dict[str, Any]) -> Any:
        """Apply one record (each operation idempotent; used live and by the outbox replay)."""
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

    # -- operations ------------------------------------------------------------------------

    def _apply_open_study(self, record: dict[str, Any]) -> str:
        experiment_id = self.ensure_experiment()
        tags = {**record["tags"], TAG_STUDY_ID: self._study_id, TAG_ROLE: ROLE_STUDY}
        run_id, existing = self._create_or_reopen(
            self._find_run(), experiment_id, record["run_name"], tags
        )
        self._log_params(run_id, record["params"], existing)
        for name, text in record["texts"].items():
            self._client.log_text(run_id, text, name)
        self.parent_run_id = run_id
        return run_id

    def _apply_trial_run(self, record: dict[str, Any]) -> str:
        trial_id = record["trial_id"]
        parent_id = self._require_parent()
        tags = {
            TAG_ROLE: ROLE_TRIAL,  # the caller may say "baseline" or "final"
            **record["tags"],
            TAG_STUDY_ID: self._study_id,
            TAG_TRIAL_ID: trial_id,
            TAG_PARENT_RUN_ID: parent_id,
        }
        if tags[TAG_ROLE] not in RUN_ROLES:
            raise ValueError(
                f"role of trial {trial_id} must be one of {list(RUN_ROLES)}: {tags[TAG_ROLE]!r}"
            )
        cached = self._runs.get(trial_id)
        run = self._client.get_run(cached) if cached else self._find_run(trial_id)
        run_id, existing = self._create_or_reopen(
            run, self.ensure_experiment(), record["run_name"], tags
        )
        self._log_params(run_id, record["params"], existing)
        self._runs[trial_id] = run_id
        return run_id

    def _create_or_reopen(
        self, run: Run | None, experiment_id: str, run_name: str, tags: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """Create the run, or set an existing one RUNNING again with refreshed tags.
        Returns its id and its already-logged params (params are immutable)."""
        if run is None:
            created = self._client.create_run(
                experiment_id, run_name=run_name, tags=self._clip_tags(tags)
            )
            return created.info.run_id, {}
        if run.info.status != "RUNNING":
            self._client.update_run(run.info.run_id, status="RUNNING")
        self._log_tags(run.info.run_id, tags)
        return run.info.run_id, dict(run.data.params)

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
        for _ in self.terminate_running_children(child_status):
            pass
        self._client.set_terminated(parent_id, record["status"])

    def _retire_orphans(self, known: set[str]) -> None:
        for run in self._search_runs(children=True):
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

    # -- lookups ---------------------------------------------------------------------------

    def ensure_experiment(self) -> str:
        """Get or create the experiment; tolerate another process creating it concurrently."""
        if self.experiment_id is not None:
            return self.experiment_id
        name = self._experiment_name
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                self.experiment_id = self._client.create_experiment(
                    name,
                    artifact_location=self._artifact_location,
                    # the UI opens it in the model-training view, not the GenAI one
                    tags={"mlflow.experimentKind": "custom_model_development"},
                )
                return self.experiment_id
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
        self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def _search_runs(
        self, *, children: bool, trial_id: str | None = None, status: str | None = None
    ) -> list[Run]:
        """All active runs of this study -- the parent, or with ``children`` the runs of its
        trials (any role but ``study``), optionally of one ``trial_id``/``status`` -- oldest
        first, following pagination."""
        role = (
            f"tags.{TAG_ROLE} != '{ROLE_STUDY}'"
            if children
            else f"tags.{TAG_ROLE} = '{ROLE_STUDY}'"
        )
        clauses = [f"tags.{TAG_STUDY_ID} = '{self._study_id}'", role]
        if trial_id is not None:
            clauses.append(f"tags.{TAG_TRIAL_ID} = '{trial_id}'")
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self._client.search_runs(
                [self.ensure_experiment()],
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

    def _find_run(self, trial_id: str | None = None) -> Run | None:
        """The parent run (no ``trial_id``) or the run of ``trial_id``, whatever its role."""
        runs = self._search_runs(children=trial_id is not None, trial_id=trial_id)
        if len(runs) > 1:
            # Only possible if two drivers raced on the same study; use the oldest, consistently.
            what = "parent" if trial_id is None else f"trial {trial_id}"
            self._warn_once(
                f"dup:{trial_id}",
                "study %s has %d runs for the %s; using the oldest",
                self._study_id,
                len(runs),
                what,
            )
        return runs[0] if runs else None

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            run = self._find_run()
            if run is None:
                raise RuntimeError("no parent run for this study: call open_study() first")
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def _trial_run_id(self, trial_id: str) -> str:
        run_id = self._runs.get(trial_id)
        if run_id is None:
            run = self._find_run(trial_id)
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

    # -- tags and params -------------------------------------------------------------------

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
