"""A full disk, an exhausted quota or storage that turned read-only, anywhere in a study.

Such a fault is not a bug and not a trial's failure: every later write fails alike, and
Ray, Optuna, SQLite and MLflow each report it in their own words (``OSError`` 28,
``StorageInternalError``, "database or disk is full", an ``EOFError`` from a torn pickle),
as pages of tracebacks. The driver turns all of them into one :class:`StorageFault`:

- :func:`storage_fault` recognises one in an exception (its whole cause/context chain,
  Ray's wrapped worker errors included, by errno or by the message the library wraps it
  in) and names the path when the error does;
- :func:`probe` asks the storage itself (a 64 KiB write, removed again), so a fault seen
  only inside the trials (their checkpoints) is found too: ``study.callbacks.StorageGuard``
  probes
  after every trial error and every ``every`` seconds while trials run;
- :data:`study.interrupts.STOP` stops Ray as on Ctrl-C (its state is saved where it
  still can be) and the driver exits with :data:`EXIT_STORAGE` and one line: what, where,
  and the ``--resume`` command that continues once space is freed. Every file the study
  writes is written atomically or appended line by line (a torn last line is truncated
  away), so nothing is half-written when the disk fills.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# no Ray here: run.py imports this module before it sets Ray's auth mode (read at import)

#: exit code of a study stopped by its storage (BSD sysexits' EX_IOERR)
EXIT_STORAGE = 74

_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
#: how libraries that swallow the errno word it (SQLite via SQLAlchemy/MLflow/Optuna, Ray)
_PHRASES = {
    "no space left on device": "no space left on device",
    "database or disk is full": "no space left on device",
    "disk quota exceeded": "disk quota exceeded",
    "read-only file system": "read-only file system",
    "attempt to write a readonly database": "read-only file system",
}


class StorageFault(BaseException):  # noqa: N818 -- stops the study like an interrupt
    """The study's storage refused a write (full, over quota, read-only)."""

    exit_code = EXIT_STORAGE

    def __init__(self, problem: str, path: str | None = None) -> None:
        self.problem, self.path = problem, path
        super().__init__(f"{problem}" + (f" writing {path}" if path else ""))


def storage_fault(exc: BaseException) -> StorageFault | None:
    """The :class:`StorageFault` behind ``exc`` (anywhere in its chain), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFault):
            return e
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return StorageFault(_ERRNOS[e.errno], e.filename and str(e.filename))
        text = str(e).lower()
        for phrase, problem in _PHRASES.items():
            if phrase in text:
                return StorageFault(problem)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None), getattr(e, "cause", None)]
    return None


def probe(folder: str | os.PathLike[str], size: int = 64 * 1024) -> StorageFault | None:
    """Write ``size`` bytes to a scratch file in ``folder`` and remove it: the fault the
    storage answers with, or None when it took the write."""
    path = Path(folder) / f".kdstudy-probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * size)
        finally:
            os.close(fd)
    except OSError as exc:
        fault = storage_fault(exc)
        if fault is not None:
            return StorageFault(fault.problem, str(folder))
        return None  # another problem (a vanished folder) is not a storage fault
    finally:
        try:
            path.unlink()
        except OSError:
            pass
    return None


def fault_behind(exc: BaseException, folder: str | os.PathLike[str]) -> StorageFault | None:
    """Whether a storage fault is why ``exc`` ended the study: named in its chain, already
    seen by the driver (:data:`study.interrupts.STOP`), or -- for the errors a full disk
    causes only indirectly, such as Ray's ``EOFError`` on a torn ``error.pkl`` -- what the
    storage answers to a probe now."""
    from study.interrupts import STOP

    fault = storage_fault(exc)
    if fault is None and isinstance(STOP.fault, StorageFault):
        fault = STOP.fault
    if fault is None and Path(folder).is_dir():
        fault = probe(folder)
    return fault


def fault_line(fault: StorageFault, resume: str) -> str:
    """The one line the study ends with."""
    where = f" (writing {fault.path})" if fault.path else ""
    fix = "make it writable" if "read-only" in fault.problem else "free space"
    return (
        f"error: storage: {fault.problem}{where}; the study stopped with nothing "
        f"half-written: {fix}, then continue it with: {resume}"
    )


__all__ = [
    "EXIT_STORAGE",
    "StorageFault",
    "fault_behind",
    "fault_line",
    "probe",
    "storage_fault",
]
