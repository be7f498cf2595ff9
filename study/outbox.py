"""The durable outbox of the study's MLflow writes: an append-only JSON-lines journal.

While MLflow is unreachable, :class:`study.tracking.StudyTracker` appends each write it could
not make here and replays the journal, in order, before its next successful write. The file
outlives the driver: a killed driver's queued writes are landed by the next tracker opened on
the same path (the replayed operations are idempotent, see ``study/tracking.py``).

Durability rules:

* :meth:`Outbox.append` writes one line and fsyncs it before returning, so an acknowledged
  record survives a crash of the driver and of the machine. With ``fsync_appends=False`` the
  line is only written (``write(2)``: it survives a crash or kill of the driver, the kernel
  holds it) and fsynced by the next :meth:`sync` -- which every :meth:`replay` does first,
  before any record is delivered -- a group commit that keeps fsync latency (seconds on a disk
  busy with checkpoints) off the appending thread; a crash mid-write can only leave a cut last line,
  which :meth:`Outbox.read` skips (that record was never acknowledged).
* :meth:`Outbox.replace` (what is left after a partial replay) rewrites the whole file
  atomically (``trainables/fsutil.py``): a crash leaves the old list or the new one, never a
  mix; an empty list removes the file.

Concurrency: one thread may :meth:`append` while another replays (the tracker's background
delivery thread, ``study/tracking.py``). Every file operation holds the outbox's lock, and a
replay removes only the records it read (:meth:`drop_first`), so a record appended during a
replay stays queued behind the others.

With ``path=None`` the records are kept in memory only (lost when the process ends; fine for
tests and throw-away studies).

This module knows nothing of MLflow (or Ray): records are plain JSON-serialisable dicts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from trainables.fsutil import atomic_write_text

logger = logging.getLogger(__name__)

Record = dict[str, Any]


class Outbox:
    """An ordered, durable queue of records (a JSON-lines file, or a list when ``path=None``).

    One process at a time (the study's driver); within it, appends and replays may run in
    different threads (see the module docstring).
    """

    def __init__(self, path: str | None, *, fsync_appends: bool = True) -> None:
        self._path = None if path is None else os.path.abspath(path)
        self._memory: list[Record] = []
        self._lock = threading.RLock()
        self._fsync_appends = fsync_appends
        self._unsynced = False

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "memory": list(self._memory), "fsync": self._fsync_appends}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = state["path"]
        self._memory = list(state["memory"])
        self._lock = threading.RLock()
        self._fsync_appends = state.get("fsync", True)
        self._unsynced = False

    @property
    def path(self) -> str | None:
        """Absolute path of the journal, ``None`` for an in-memory outbox."""
        return self._path

    @property
    def where(self) -> str:
        """Where the records are kept, for log lines."""
        return self._path or "memory"

    def append(self, record: Record) -> None:
        """Queue ``record`` behind the others; durable (fsynced) when this returns."""
        if self._path is None:
            with self._lock:
                self._memory.append(record)
            return
        line = json.dumps(record) + "\n"
        with self._lock:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            data = line.encode("utf-8")
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if self._fsync_appends:
                        # The outbox exists to survive the driver: make the line durable now.
                        os.fsync(fd)
                    else:
                        self._unsynced = True
                except OSError:
                    # a full disk: no torn line stays behind (the caller learns of the fault)
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)

    def sync(self) -> None:
        """fsync the lines appended without it (``fsync_appends=False``); cheap otherwise."""
        if self._path is None or not self._unsynced:
            return
        with self._lock:
            self._unsynced = False
            try:
                fd = os.open(self._path, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def pending(self) -> bool:
        """True when at least one record waits (cheap: no parsing)."""
        if self._path is None:
            return bool(self._memory)
        try:
            return os.path.getsize(self._path) > 0
        except FileNotFoundError:
            return False

    def read(self) -> list[Record]:
        """All queued records, oldest first (a malformed line is skipped with a warning)."""
        if self._path is None:
            with self._lock:
                return list(self._memory)
        records: list[Record] = []
        try:
            with self._lock, open(self._path, encoding="utf-8") as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            return records
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                # Only a line cut by a crash mid-write can be malformed; it was never acked.
                logger.warning("outbox %s: skipping malformed line %d", self._path, number)
        return records

    def replace(self, records: list[Record]) -> None:
        """Make ``records`` the whole outbox (atomically); ``[]`` clears it."""
        with self._lock:
            if self._path is None:
                self._memory = list(records)
                return
            if not records:
                try:
                    os.remove(self._path)
                except FileNotFoundError:
                    pass
                return
            atomic_write_text(self._path, "".join(json.dumps(r) + "\n" for r in records))

    def clear(self) -> None:
        self.replace([])

    def drop_first(self, count: int) -> None:
        """Remove the ``count`` oldest records (those a replay read and handled); records
        appended since stay queued. Atomic like :meth:`replace`."""
        if count <= 0:
            return
        with self._lock:
            self.replace(self.read()[count:])

    def replay(
        self,
        apply: Callable[[Record], Any],
        *,
        is_outage: Callable[[BaseException], bool],
        is_permanent: Callable[[BaseException], bool],
        on_rejected: Callable[[Record, BaseException], None],
    ) -> tuple[int, BaseException | None]:
        """``apply`` every record, oldest first; return ``(number of records, outage)``.

        At the first error ``is_outage`` accepts, that record and the later ones stay queued
        (written back atomically) and the error is returned; else the outbox ends empty and
        ``outage`` is ``None``. A record failing with an ``is_permanent`` error is passed to
        ``on_rejected`` and dropped. Any other error is logged with its traceback and the record
        dropped: re-raising would block every later write behind it forever. ``apply`` must be
        idempotent: a crash mid-replay replays the already-applied records again. Records
        appended (by another thread) during the replay are not touched: they stay queued.
        """
        self.sync()  # a record is on disk before it is delivered
        records = self.read()
        for index, record in enumerate(records):
            try:
                apply(record)
            except Exception as exc:
                if is_outage(exc):
                    self.drop_first(index)
                    return len(records), exc
                if is_permanent(exc):
                    on_rejected(record, exc)
                else:
                    # An unexpected error (a bug, a record whose parent was dropped).
                    logger.error(
                        "outbox replay of %s failed; dropped", record.get("op"), exc_info=exc
                    )
        self.drop_first(len(records))
        return len(records), None
