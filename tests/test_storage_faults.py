"""A full disk and a read-only disk, injected for real (a small tmpfs mounted for the test;
root only): the study stops within seconds with one line (exit 74) naming the problem and
the command that continues it, nothing it wrote is half-written, a read-only study
directory is refused before anything starts, and once space is freed ``--resume`` finishes
the study with one MLflow run per trial (none lost, none duplicated).

Recognising the fault in what libraries raise (``storage_fault``) and probing the storage
(``probe``) are tested without mounts.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.outbox import Outbox
from study.storage_faults import EXIT_STORAGE, StorageFault, fault_line, probe, storage_fault
from tests.conftest import shared_teachers
from tests.test_interrupts import (
    ENV,
    SEARCH_ONLY,
    fault_during_search,
    run_named_command,
    start,
    study_cmd,
)
from tests.test_study_e2e import check_structure

# -- recognising the fault ---------------------------------------------------------------


def _chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_a_full_disk_is_recognised_whatever_wraps_it() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device", "/st/outbox.jsonl")
    fault = storage_fault(_chained(RuntimeError("callback failed"), enospc))
    assert fault is not None and fault.problem == "no space left on device"
    assert fault.path == "/st/outbox.jsonl"
    # SQLite (MLflow, Optuna) words it its own way, under SQLAlchemy's wrapper
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    fault = storage_fault(
        _chained(ValueError("An exception is raised during the commit"), sqlite_full)
    )
    assert fault is not None and fault.problem == "no space left on device"
    ro = storage_fault(OSError(errno.EROFS, "Read-only file system"))
    assert ro is not None and ro.problem == "read-only file system"
    quota = storage_fault(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert quota is not None and quota.problem == "disk quota exceeded"
    # other errors are not storage faults (they keep their traceback)
    assert storage_fault(OSError(errno.EACCES, "Permission denied")) is None
    assert storage_fault(_chained(RuntimeError("x"), ValueError("nan loss"))) is None


def test_the_line_says_what_where_and_how_to_continue() -> None:
    line = fault_line(
        StorageFault("no space left on device", "/st"), "python study/run.py --resume"
    )
    assert line == (
        "error: storage: no space left on device (writing /st); the study stopped with nothing "
        "half-written: free space, then continue it with: python study/run.py --resume"
    )
    ro = fault_line(StorageFault("read-only file system"), "cmd")
    assert "make it writable, then continue it with: cmd" in ro


# -- a real small disk -----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 MB tmpfs mounted for this test (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write zeros until the disk refuses (ENOSPC): nothing is left for anyone."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def test_probe_and_outbox_on_a_full_then_read_only_disk(small_disk: Path) -> None:
    box = Outbox(str(small_disk / "st" / "outbox.jsonl"))
    box.append({"op": "a", "n": 1})
    assert probe(small_disk) is None
    filler = fill(small_disk)
    fault = probe(small_disk)
    assert fault is not None and fault.problem == "no space left on device"
    with pytest.raises(OSError) as info:
        box.append({"op": "b", "blob": "x" * 200_000})  # larger than any space left
    assert storage_fault(info.value) is not None
    assert box.read() == [{"op": "a", "n": 1}], "a torn line stayed in the outbox"
    filler.unlink()
    remount(small_disk, "ro")
    try:
        fault = probe(small_disk)
        assert fault is not None and fault.problem == "read-only file system"
    finally:
        remount(small_disk, "rw")


@pytest.mark.slow
def test_a_disk_that_fills_during_the_search_stops_the_study_and_resume_finishes_it(
    small_disk: Path, tmp_path: Path
) -> None:
    storage = small_disk / "st"
    cmd = [*study_cmd(storage, shared_teachers()), *SEARCH_ONLY]
    err = tmp_path / "stderr.txt"
    proc = start(cmd, tmp_path, err, ENV)
    seen: list[str] = []
    filled: list[Path] = []
    stopped_after = fault_during_search(
        proc, lambda: filled.append(fill(small_disk)), seen, timeout=180
    )
    (filler,) = filled
    out, stderr = "".join(seen), err.read_text()
    assert proc.returncode == EXIT_STORAGE, out[-3000:] + stderr[-3000:]
    assert stopped_after < 60, f"stopped {stopped_after:.0f}s after the disk filled"
    assert "Traceback" not in out + stderr, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: storage: no space left on device")
    assert f"--storage {storage}" in line and line.endswith("--resume")
    # nothing the study wrote is half-written: its records parse, line by line
    for name in ("study.json", "spec.json"):
        json.loads((storage / name).read_text())
    outbox = storage / "mlflow_outbox.jsonl"
    if outbox.exists():
        for record in outbox.read_text().splitlines():
            json.loads(record)
    assert not (storage / "leaderboard.json").exists()  # no claim from a cut study

    # read-only storage: refused in one line before anything starts, nothing changes
    remount(small_disk, "ro")
    try:
        r = run_named_command(line, tmp_path, ENV)
    finally:
        remount(small_disk, "rw")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"error: --storage: {storage} is not writable (a writable directory; created if missing)"
    ]

    filler.unlink()  # space again: the named command finishes the study
    t0 = time.time()
    r = run_named_command(line, tmp_path, ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"stopped {stopped_after:.1f}s after the fill; resume {time.time() - t0:.1f}s")
    children = check_structure(storage, "quickstart", 3, 0)
    assert {c.info.status for c in children} == {"FINISHED"}
    summary = json.loads((storage / "trials.json").read_text())
    assert len([t for t in summary if t["status"] == "TERMINATED"]) == 3, summary
