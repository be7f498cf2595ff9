"""An exclusive inter-process file lock (``fcntl.flock``) with an optional timeout.

Used by the teacher registry (one lock per registry folder) and the cost-matrix cache
(one lock per cache key) so that two studies starting together do not both train a
teacher or build a cost matrix.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``path`` (created if needed).

    ``timeout`` None waits as long as it takes (another study may be training the very
    teacher we need); otherwise :class:`TimeoutError` after ``timeout`` seconds. The
    lock dies with the process, so a killed trainer never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for %s (held by another process)", path)
            deadline = None if timeout is None else time.monotonic() + timeout
            if deadline is None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            else:
                while True:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TimeoutError(
                                f"could not lock {path} within {timeout} s: another process "
                                "is training this teacher or building this cost matrix"
                            ) from None
                        time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
