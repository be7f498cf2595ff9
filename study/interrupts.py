"""Ctrl-C and SIGTERM during a study: stop within seconds, save what Ray needs to resume,
and say so (exit 130 for SIGINT, 143 for SIGTERM).

Ray's own handling is not enough (Ray 2.60, ``ray/tune/tune.py``): ``tune.run`` -- which
``Tuner.fit`` calls -- swaps in its own SIGINT handler that only sets a local
``threading.Event``; the loop then ends, Ray saves the experiment state one last time (the
cut trials still unfinished, so ``Tuner.restore(resume_unfinished=True)`` continues them),
stops the trial actors, marking them ``TERMINATED``, calls ``on_experiment_end`` and
``fit()`` *returns normally*. The caller cannot tell an interrupted experiment from a
finished one, so a driver went on to the next phase and reported cut trials as complete.
``ray.init`` sets SIGTERM to ``sys.exit(15)``, which skips that last save.

So the driver owns both signals (:data:`STOP`): ``TUNE_DISABLE_SIGINT_HANDLER=1`` keeps
Ray's handler off SIGINT, and the first SIGINT or SIGTERM during a Tune run is recorded and
handed to Ray's handler through the one entry Ray always installs with it, SIGUSR1 -- Ray
then stops exactly as on its own Ctrl-C. Outside a Tune run (teacher training, between
phases, the leaderboard) the signal raises :class:`StudyInterrupted` at once; so does a
second signal (no waiting for Ray's last save). The phase loop checks :data:`STOP` after each
``fit()`` and raises :class:`StudyInterrupted` instead of going on; the MLflow callback
closes the runs of cut trials KILLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: what Ray's Tune reads to leave SIGINT alone (``ray/tune/tune.py``)
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StudyInterrupted(BaseException):  # noqa: N818 -- like KeyboardInterrupt, not an error
    """The study was stopped by a signal (a BaseException: ``except Exception`` lets it by)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell convention)."""
        return 128 + int(self.signum)


class StopSignals:
    """The driver's SIGINT/SIGTERM handler (one per process: :data:`STOP`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.fault: BaseException | None = None  # a StorageFault (study/storage_faults.py)
        self._in_tune = False
        self._saved: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        """A signal or a storage fault stopped the study (cut trials are not finished)."""
        return self.signum is not None or self.fault is not None

    stopping = interrupted

    def stop_for(self, fault: BaseException) -> None:
        """Stop the study because of ``fault`` (a :class:`StorageFault`): during a Tune run
        Ray is asked to stop as on its own Ctrl-C and :meth:`check` raises ``fault`` after
        it; outside one, the next :meth:`check` raises it."""
        if self.fault is not None or self.signum is not None:
            return
        self.fault = fault
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if self._in_tune and callable(ray_stop) and ray_stop is not self._handle:
            ray_stop(signal.SIGUSR1, None)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (again: ``ray.init`` replaces SIGTERM's handler).
        The handlers found the first time are what :meth:`restore` puts back."""
        os.environ[TUNE_SIGINT_ENV] = "1"
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if current is not self._handle:
                self._saved.setdefault(sig, current)
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def check(self) -> None:
        """Raise :class:`StudyInterrupted` if a signal came (e.g. after a ``fit()``), or the
        storage fault that stopped the study."""
        if self.fault is not None:
            raise self.fault
        if self.signum is not None:
            raise StudyInterrupted(self.signum)

    @contextlib.contextmanager
    def tune_run(self) -> Iterator[None]:
        """Around ``tuner.fit()``: a signal asks Ray to stop (it saves its state and returns);
        after it, :meth:`check`. SIGUSR1 is ours until Tune installs its handler on it, so a
        signal before that (or a stray SIGUSR1) stops the study instead of killing it."""
        self.check()
        self.install()
        signal.signal(signal.SIGUSR1, self._handle)
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False
        self.check()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signal.SIGINT if signum == signal.SIGUSR1 else signum
        ray_stop = signal.getsignal(signal.SIGUSR1)
        if first and self._in_tune and callable(ray_stop) and ray_stop is not self._handle:
            ray_stop(signal.SIGUSR1, frame)  # Ray's own "stop the experiment" handler
            return
        raise StudyInterrupted(self.signum or signum)


#: the driver's one instance (``study/run.py`` installs it; callbacks read ``interrupted``)
STOP = StopSignals()
