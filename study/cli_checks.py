"""Checks of ``study/run.py``'s flags and input files before anything starts.

Each check returns one error line (``<flag or key>: <what is wrong> (<what is allowed>)``)
or None; nothing here writes a file, imports Ray or opens MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

#: MLflow tracking stores (``+driver`` suffixes allowed for the databases)
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file")
#: Optuna RDB storages (SQLAlchemy URLs)
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``error: ...`` (exit 2), not usage + error,
    and no abbreviated flags (``--stor`` is not ``--storage``: a typo must not guess)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def check_space(space: str) -> str | None:
    path = Path(space)
    if path.is_dir():
        return f"--space: {space} is a directory (a study YAML file, e.g. search_spaces/*.yaml)"
    if not path.is_file():
        return f"--space: {space}: no such file (a study YAML file, e.g. search_spaces/*.yaml)"
    return None


def _uri_problem(uri: str, schemes: tuple[str, ...]) -> str | None:
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in schemes:
        return f"scheme {scheme!r} of {uri!r}" if scheme else f"{uri!r} has no scheme"
    if scheme in ("http", "https") and not parts.hostname:
        return f"{uri!r} has no host"
    if scheme == "sqlite" and not parts.path.strip("/"):
        return f"{uri!r} names no database file"
    return None


def _dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a writable directory; None if it can."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} (above {path}) is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK) or _pseudo_fs(parent):
        return f"{path} cannot be created: {parent} is not writable"
    return None


def _pseudo_fs(path: Path) -> bool:
    """Kernel file systems where even root cannot create folders (/proc, /sys)."""
    resolved = path.resolve()
    return any(resolved == Path(p) or Path(p) in resolved.parents for p in ("/proc", "/sys"))


def check_flags(args: Any, storage: Path) -> str | None:
    """The path and URI flags: --storage (the resolved study directory), --teachers-dir,
    --tracking-uri, --optuna-storage."""
    problem = _dir_problem(storage)
    if problem:
        flag = "--storage" if args.storage else "--storage (default ./studies/<name>)"
        return f"{flag}: {problem} (a writable directory; created if missing)"
    if args.teachers_dir:
        problem = _dir_problem(Path(args.teachers_dir).resolve())
        if problem:
            return f"--teachers-dir: {problem} (a writable directory; created if missing)"
    for flag, uri, schemes, allowed in (
        (
            "--tracking-uri",
            args.tracking_uri,
            TRACKING_SCHEMES,
            "an MLflow server http(s)://host:port, or a store URI: sqlite:///path.db, "
            "postgresql://..., mysql://..., file:///dir",
        ),
        (
            "--optuna-storage",
            args.optuna_storage,
            OPTUNA_SCHEMES,
            "an RDB URL: sqlite:///path.db, postgresql://..., mysql://...",
        ),
    ):
        problem = None if uri is None else _uri_problem(uri, schemes)
        if problem:
            return f"{flag}: {problem} (allowed: {allowed})"
    return None


def check_cost_file(path: str, num_classes: int | None) -> str | None:
    """A cost matrix given in the study file (``trial.cost.path``): a readable torch file
    holding a finite, square ``[C, C]`` tensor with one row per class."""
    import torch

    classes = num_classes or "the classes"
    allowed = (
        f"a cost matrix: a torch.save'd finite square [C, C] tensor, C = {classes}; "
        "or leave trial.cost.path unset: the driver builds and caches it"
    )
    if not Path(path).is_file():
        return f"trial.cost.path: {path} is not a file ({allowed})"
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line, never a traceback
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return f"trial.cost.path: {path}: not a readable cost matrix ({what}) ({allowed})"
    if not isinstance(d, torch.Tensor) or d.dim() != 2 or d.shape[0] != d.shape[1]:
        got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
        return f"trial.cost.path: {path}: got {got}, not a square matrix ({allowed})"
    if not bool(torch.isfinite(d).all()):
        return f"trial.cost.path: {path}: has non-finite entries ({allowed})"
    if num_classes is not None and d.shape[0] != num_classes:
        return f"trial.cost.path: {path}: {d.shape[0]} x {d.shape[0]} ({allowed})"
    return None


def without_userinfo(uri: str) -> str:
    """``uri`` without ``user:password@`` (a URI printed or logged never shows a secret)."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri  # unchanged (urlunsplit would rewrite sqlite://// paths)
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.hostname or ''}{port}"))


def dataset_classes(dataset: str) -> int | None:
    """The registry's class count of a dataset (None when it depends on the files)."""
    from trainables.datasets import resolve_dataset

    spec, _ = resolve_dataset(dataset)
    n = getattr(spec, "num_classes", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


__all__ = [
    "OneLineParser",
    "check_cost_file",
    "check_flags",
    "check_space",
    "dataset_classes",
    "without_userinfo",
]
