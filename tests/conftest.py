"""Test-session settings that must exist before anything imports Ray.

Ray reads its authentication mode once, when it is imported. Tests that start Ray in
this process run it as the product does, with token auth and a fresh token; tests of
the CLI start ``study/run.py`` in subprocesses whose environment they choose.
"""

from __future__ import annotations

import os
import secrets

if os.environ.get("RAY_AUTH_MODE", "token") == "token":
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_SHARED: list[Path] = []


def shared_teachers() -> Path:
    """One digits-teacher registry for the whole test session, for studies on the
    quickstart's split (val_fraction 0.1, split_seed 0): they share a teacher (training it
    takes ~30 s, minutes on a busy machine) the way studies share ``studies/teachers``.
    A study on another split would be refused that teacher (it may have seen the study's
    validation images): such tests, and tests of teacher training, use their own folder.
    ``$KDSTUDY_TEST_TEACHERS`` names an existing registry to reuse instead."""
    given = os.environ.get("KDSTUDY_TEST_TEACHERS")
    if given:
        return Path(given)
    if not _SHARED:
        _SHARED.append(Path(tempfile.mkdtemp(prefix="kdstudy-teachers-")))
    return _SHARED[0]


@pytest.fixture(scope="session", autouse=True)
def _remove_shared_teachers() -> Iterator[None]:
    yield
    for path in _SHARED:
        shutil.rmtree(path, ignore_errors=True)
