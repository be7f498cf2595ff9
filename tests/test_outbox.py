"""Tests of study/outbox.py: the durable JSON-lines journal of MLflow writes (no MLflow here)."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import study.outbox
from study.outbox import Outbox

ROOT = Path(__file__).resolve().parents[1]


def test_outbox_module_does_not_import_mlflow() -> None:
    tree = ast.parse(Path(study.outbox.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "mlflow" not in imported and "ray" not in imported
    # And at run time: importing it loads neither (a fresh interpreter).
    code = (
        "import sys, study.outbox; print(sorted(m for m in ('mlflow', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.fixture(params=["file", "memory"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Outbox:
    return Outbox(str(tmp_path / "sub" / "box.jsonl") if request.param == "file" else None)


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {"op": "log_result", "trial_id": "t", "step": i, "metrics": {"m": i / 3}} for i in range(n)
    ]


def test_append_read_order_and_clear(outbox: Outbox) -> None:
    assert not outbox.pending() and outbox.read() == []
    for record in _records(3):
        outbox.append(record)
    assert outbox.pending()
    assert outbox.read() == _records(3)  # floats survive the JSON round trip exactly
    outbox.clear()
    assert not outbox.pending() and outbox.read() == []
    if outbox.path is not None:
        assert not Path(outbox.path).exists()
        assert outbox.where == outbox.path
    else:
        assert outbox.where == "memory"


def test_file_outbox_survives_a_new_instance_and_skips_a_cut_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "box.jsonl"
    first = Outbox(str(path))
    for record in _records(2):
        first.append(record)
    # A crash mid-write leaves a cut last line: never acknowledged, skipped with a warning.
    with path.open("a") as fh:
        fh.write('{"op": "log_res')
    second = Outbox(str(path))  # the next driver
    with caplog.at_level(logging.WARNING, logger="study.outbox"):
        assert second.read() == _records(2)
    assert any("malformed line 3" in r.getMessage() for r in caplog.records)


def test_replace_rewrites_whole_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "box.jsonl"
    box = Outbox(str(path))
    for record in _records(4):
        box.append(record)
    box.replace(_records(4)[2:])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == _records(4)[2:]
    # No temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.jsonl"]


class Outage(Exception):
    pass


class Rejected(Exception):
    pass


def test_replay_stops_at_an_outage_keeps_the_rest_and_drops_rejected(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(5)
    for record in records:
        outbox.append(record)
    applied: list[int] = []
    rejected: list[int] = []

    def apply(record: dict[str, Any]) -> None:
        step = record["step"]
        if step == 1:
            raise Rejected("bad request")
        if step == 2:
            raise KeyError("a bug")
        if step == 3 and not applied[1:]:
            raise Outage("down")
        applied.append(step)

    kwargs = {
        "is_outage": lambda exc: isinstance(exc, Outage),
        "is_permanent": lambda exc: isinstance(exc, Rejected),
        "on_rejected": lambda record, exc: rejected.append(record["step"]),
    }
    with caplog.at_level(logging.ERROR, logger="study.outbox"):
        count, outage = outbox.replay(apply, **kwargs)
    assert count == 5 and isinstance(outage, Outage)
    assert applied == [0] and rejected == [1]
    assert any("outbox replay of log_result failed" in r.getMessage() for r in caplog.records)
    assert outbox.read() == records[3:]  # the failed record and everything after it

    applied.append(-1)  # "MLflow is back": step 3 now succeeds
    count, outage = outbox.replay(apply, **kwargs)
    assert (count, outage) == (2, None)
    assert applied == [0, -1, 3, 4]
    assert not outbox.pending()


def test_a_record_appended_during_a_replay_stays_queued(outbox: Outbox) -> None:
    """The tracker's delivery thread replays while the driver's thread appends: a replay
    removes only the records it read, never one appended meanwhile."""
    records = _records(4)
    for record in records[:2]:
        outbox.append(record)
    seen: list[int] = []

    def apply(record: dict[str, Any]) -> None:
        seen.append(record["step"])
        if record["step"] == 0:
            outbox.append(records[2])  # "another thread" appends mid-replay

    kwargs = {
        "is_outage": lambda exc: False,
        "is_permanent": lambda exc: False,
        "on_rejected": lambda record, exc: None,
    }
    assert outbox.replay(apply, **kwargs) == (2, None)
    assert seen == [0, 1] and outbox.read() == [records[2]]
    outbox.append(records[3])
    assert outbox.replay(apply, **kwargs) == (2, None)
    assert seen == [0, 1, 2, 3] and not outbox.pending()


def test_outbox_pickles_without_its_lock(outbox: Outbox) -> None:
    import pickle

    outbox.append(_records(1)[0])
    clone = pickle.loads(pickle.dumps(outbox))
    assert clone.read() == outbox.read() and clone.path == outbox.path


def test_deferred_fsync_appends_are_readable_at_once_and_synced_before_replay(
    tmp_path: Path,
) -> None:
    box = Outbox(str(tmp_path / "box.jsonl"), fsync_appends=False)
    records = _records(3)
    for record in records:
        box.append(record)
    # written (a new instance -- the next driver -- reads them), fsync still owed
    assert Outbox(str(tmp_path / "box.jsonl")).read() == records
    assert box._unsynced
    synced_first: list[bool] = []
    kwargs = {
        "is_outage": lambda exc: False,
        "is_permanent": lambda exc: False,
        "on_rejected": lambda record, exc: None,
    }
    assert box.replay(lambda r: synced_first.append(not box._unsynced), **kwargs) == (3, None)
    assert synced_first == [True, True, True] and not box.pending()
