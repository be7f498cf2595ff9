"""One line per finished trial, and a heartbeat while trials run (driver side)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback


class ProgressCallback(Callback):
    """Concise progress for long studies: what finished, with its score, and a periodic
    status line (running trials and their epochs) at most every ``every`` seconds."""

    def __init__(
        self,
        phase: str,
        total: int,
        metric: str,
        epochs: int,
        *,
        quiet: bool = False,
        every: float = 15.0,
        outputs_dir: str | None = None,
        log_file: str | None = None,
        label: Any = None,
    ) -> None:
        self.phase, self.total, self.metric, self.epochs = phase, total, metric, epochs
        self.outputs_dir, self.log_file = outputs_dir, log_file
        self.label = label  # trial config -> a short human name (baseline and seed, family)
        self.quiet, self.every = quiet, every
        self.done = 0
        self.warned: set[tuple[str, str]] = set()
        self.running: dict[str, int] = {}
        self.t0 = time.time()
        self.last = 0.0

    def _print(self, msg: str) -> None:
        if not self.quiet:
            print(
                f"  [{self.phase} {time.time() - self.t0:6.0f}s] {msg}", file=sys.stdout, flush=True
            )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.running[trial.trial_id] = int(result.get("training_iteration", 0))
        for key, value in result.items():  # a loss term judged its epoch unhealthy: once
            if key.startswith("health/") and value and (trial.trial_id, key) not in self.warned:
                self.warned.add((trial.trial_id, key))
                self._print(f"warning: {trial.trial_id} {self._health(trial, key)}")
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            epochs = ", ".join(f"{k}@{v}/{self.epochs}" for k, v in sorted(self.running.items()))
            self._print(f"{self.done}/{self.total} done; running: {epochs}")

    def _end(self, trial: Any, what: str) -> None:
        self.done += 1
        self.running.pop(trial.trial_id, None)
        res = trial.last_result or {}
        val = res.get(self.metric)
        it = int(res.get("training_iteration", 0))
        score = f"{self.metric}={val:.3f}" if isinstance(val, int | float) else "no result"
        early = " (stopped early)" if what == "done" and it < self.epochs else ""
        name = trial.trial_id
        if self.label is not None:
            try:
                name = f"{trial.trial_id} {self.label(dict(trial.config))}".rstrip()
            except Exception:  # a label is a nicety; never fail the study for it
                pass
        if what == "FAILED":  # one line: the reason and where the details are
            self._print(
                f"{self.done}/{self.total} {name} FAILED after {it}/{self.epochs} epochs: "
                f"{self._reason(trial)}"
            )
            return
        self._print(
            f"{self.done}/{self.total} {name} {what}: {score} after {it}/{self.epochs} "
            f"epochs{early}"
        )

    def _health(self, trial: Any, key: str) -> str:
        """The latest health message the trial wrote (health.jsonl), cut to 300 chars."""
        term = key.split("/", 1)[1]
        msg = f"{term}: unhealthy (see diag/{term}/* in its MLflow run)"
        if self.outputs_dir:
            path = Path(self.outputs_dir) / trial.trial_id / "health.jsonl"
            try:
                lines = path.read_text().strip().splitlines()
                if lines:
                    msg = json.loads(lines[-1])["message"] + f" ({path})"
            except (OSError, ValueError, KeyError):
                pass
        return msg if len(msg) <= 300 else msg[:297] + "..."

    def _reason(self, trial: Any) -> str:
        """The failure's one-line reason (the trial's failure.json, else the last line of
        Ray's error text), cut to 200 characters, and where the whole story is."""
        reason = ""
        where = self.log_file or "the trial's MLflow run"
        if self.outputs_dir:
            folder = Path(self.outputs_dir) / trial.trial_id
            failure = folder / "failure.json"
            try:
                if failure.is_file():
                    data = json.loads(failure.read_text())
                    reason = f"{data.get('reason', 'error')}: {data.get('message', '')}"
                    where = str(failure)
                elif (folder / "error.txt").is_file():
                    lines = (folder / "error.txt").read_text().strip().splitlines()
                    reason = lines[-1] if lines else ""
                    where = str(folder / "error.txt")
            except (OSError, ValueError):
                pass
        reason = " ".join(reason.split()) or "no reason recorded"
        if len(reason) > 200:
            reason = reason[:197] + "..."
        return f"{reason} (details: {where})"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
