"""One line per finished trial, and a heartbeat while trials run (driver side)."""

from __future__ import annotations

import sys
import time
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
    ) -> None:
        self.phase, self.total, self.metric, self.epochs = phase, total, metric, epochs
        self.quiet, self.every = quiet, every
        self.done = 0
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
        self._print(
            f"{self.done}/{self.total} {trial.trial_id} {what}: {score} "
            f"after {it}/{self.epochs} epochs{early}"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
