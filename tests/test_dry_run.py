"""``--dry-run`` checks what can be checked without training (data loads, the teacher
loads strictly, one trial fits this machine, an MLflow server answers), says what it
skipped, and writes nothing. Refusals are in tests/test_bad_input.py (``*dry-run*``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from study.run import main
from tests.conftest import shared_teachers

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _dry_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str], str]:
    before = _files(tmp_path)
    code = main(
        ["--space", str(QUICKSTART), "--storage", str(tmp_path / "st"), "--dry-run", *flags]
    )
    out, err = capfd.readouterr()
    assert _files(tmp_path) == before, "a dry run wrote files"
    lines = [x for x in out.splitlines() if x.startswith(("checked:", "skipped:"))]
    return code, lines, err


def test_dry_run_loads_the_registry_teacher_and_the_data(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from study.teacher import get_or_train_teacher

    monkeypatch.chdir(tmp_path)
    teachers = shared_teachers()
    get_or_train_teacher("digits", "cnn_large", teachers_dir=teachers)  # reused when there
    code, lines, err = _dry_run(tmp_path, capfd, "--teachers-dir", str(teachers))
    assert code == 0, err
    text = "\n".join(lines)
    assert "checked: data digits: 1293 train / 145 val images, 10 classes" in text
    assert f"checked: teacher cnn_large: registry entry {teachers}" in text
    assert "loads strictly (val top-1 " in text
    assert "checked: resources: 1 CPU + 0 GPU per trial fit this machine" in text
    assert "skipped: MLflow store: not opened" in text


def test_dry_run_says_a_missing_digits_teacher_would_be_trained(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, lines, err = _dry_run(tmp_path, capfd, "--teachers-dir", str(tmp_path / "none"))
    assert code == 0, err
    assert any(
        x.startswith("skipped: teacher cnn_large: not in ") and "would train it first" in x
        for x in lines
    ), lines


def test_dry_run_refuses_an_mlflow_server_that_does_not_answer(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        uri = f"http://user:secret@127.0.0.1:{port}"
        code, _, err = _dry_run(
            tmp_path, capfd, "--teachers-dir", str(tmp_path / "none"), "--tracking-uri", uri
        )
    assert code == 2
    assert err.strip() == (
        f"error: --tracking-uri: http://127.0.0.1:{port} unreachable (ConnectionError)"
    ), err
