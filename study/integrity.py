"""Keyed signatures of the pickles a study driver writes, checked before ``--resume``.

Ray's restore unpickles what sits in the study directory (``tuner.pkl``, the
searcher state, the cloudpickled fields of ``experiment_state-*.json``, a trial's
``error.pkl``): whoever can write to ``--storage`` (a shared filesystem, as on a
cluster) could otherwise run code as whoever resumes. So the driver signs every such
file *when it writes it* with an HMAC-SHA256 key kept **outside** the study directory
(``$KDSTUDY_STATE_KEY`` names the key file; default
``$XDG_CONFIG_HOME/kdstudy/state.key``, i.e. ``~/.config/kdstudy/state.key``, mode
0600, created on first use), and ``--resume`` refuses, in one line and before Ray
starts, any such file whose signature does not verify.

What is signed, and when (``study/run.py``, ``StateSigningCallback`` in
``study/callbacks.py``):

- ``tuner.pkl``: right after the ``Tuner`` is built or restored (the driver wrote it);
- the experiment and searcher state and the trials' ``error.pkl``: in Ray's driver
  *staging* directory (local, under Ray's session folder, where Ray writes them), each
  time Ray saves its state and before Ray copies the folder to the study directory, so
  the signatures travel with the files they sign.

Nothing already in the study directory is ever signed wholesale: a file planted while
a study runs stays unsigned. A signature covers the file's path relative to the
experiment directory and its bytes, so signed files cannot be swapped either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from trainables.fsutil import atomic_write_text

#: written by the driver into the experiment directory (tuner.pkl, error.pkl)
DRIVER_MANIFEST = "kdstudy-signatures.json"
#: written into Ray's staging directory next to the state it signs, synced with it
STAGED_MANIFEST = "kdstudy-staged-signatures.json"
MANIFESTS = (DRIVER_MANIFEST, STAGED_MANIFEST)
KEY_ENV = "KDSTUDY_STATE_KEY"
#: in the experiment directory: where Ray's local staging copy of its state lives
#: (plain text, never unpickled; what it points to must verify before it is used)
STAGING_NOTE = "kdstudy-staging.txt"


class IntegrityError(RuntimeError):
    """A file Ray would unpickle on resume is not signed by this user's key."""


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kdstudy" / "state.key"


def load_key(create: bool = True) -> bytes:
    """The signing key; created (0600, 32 random bytes) on first use when ``create``."""
    path = key_path()
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise IntegrityError(
                f"no study signing key at {path} (set ${KEY_ENV} to the key file of the "
                "user who ran the study)"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        key = path.read_bytes()
    if len(key) < 16:
        raise IntegrityError(f"the study signing key {path} is shorter than 16 bytes")
    return key


def guarded_files(exp_dir: Path) -> list[Path]:
    """The files Ray may unpickle on restore: every pickle and JSON file at the top of
    the experiment directory (tuner, experiment, searcher, search-generator and callback
    state; Ray's JSON state embeds cloudpickled values) except the manifests, and every
    trial's ``error.pkl``."""
    if not exp_dir.is_dir():
        return []
    top = [
        p
        for p in exp_dir.iterdir()
        if p.is_file() and p.suffix in (".pkl", ".json") and p.name not in MANIFESTS
    ]
    errors = [p for p in exp_dir.glob("*/error.pkl") if p.is_file()]
    return sorted(top + errors)


def _digest(key: bytes, rel: str, path: Path) -> str:
    mac = hmac.new(key, rel.encode() + b"\0", hashlib.sha256)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            mac.update(chunk)
    return mac.hexdigest()


def _read_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): str(v) for k, v in files.items()}


def sign(exp_dir: Path, files: Iterable[Path], key: bytes, manifest: str = DRIVER_MANIFEST) -> None:
    """Add the signatures of ``files`` (inside ``exp_dir``) to ``exp_dir/manifest``."""
    exp_dir = Path(exp_dir)
    path = exp_dir / manifest
    entries = _read_manifest(path)
    for f in files:
        f = Path(f)
        if f.is_file():
            rel = f.relative_to(exp_dir).as_posix()
            entries[rel] = _digest(key, rel, f)
    atomic_write_text(path, json.dumps({"files": entries}, indent=1, sort_keys=True))


def sign_staged_state(staging_dir: Path, key: bytes) -> None:
    """Sign the state Ray just saved into its (local) staging directory."""
    staging_dir = Path(staging_dir)
    files = guarded_files(staging_dir)
    # replace, not merge: the staged manifest describes exactly this save
    (staging_dir / STAGED_MANIFEST).unlink(missing_ok=True)
    sign(staging_dir, files, key, STAGED_MANIFEST)


def verify(exp_dir: Path, key: bytes) -> None:
    """Raise :class:`IntegrityError` (one line) unless every guarded file verifies."""
    exp_dir = Path(exp_dir)
    known: dict[str, set[str]] = {}
    for m in MANIFESTS:
        for rel, digest in _read_manifest(exp_dir / m).items():
            known.setdefault(rel, set()).add(digest)
    for f in guarded_files(exp_dir):
        rel = f.relative_to(exp_dir).as_posix()
        digest = _digest(key, rel, f)
        if not any(hmac.compare_digest(digest, d) for d in known.get(rel, ())):
            raise IntegrityError(
                f"{f}: not signed by this user's study key ({key_path()}); Ray would "
                "unpickle it on resume, which runs any code it contains, so the study was "
                "not resumed (if the study directory was written by someone else or changed "
                "since, start a new study; a stray error.pkl may be deleted)"
            )


def note_staging(exp_dir: Path, staging_dir: Path) -> None:
    """Remember Ray's staging directory of ``exp_dir`` (for :func:`recover_from_staging`)."""
    try:
        atomic_write_text(Path(exp_dir) / STAGING_NOTE, str(Path(staging_dir).absolute()) + "\n")
    except OSError:
        pass  # a full disk: the study stops anyway; there is just no fallback copy


def recover_from_staging(exp_dir: Path, key: bytes) -> Path | None:
    """Repair the state of ``exp_dir`` that Ray's copy left torn (the disk filled while Ray
    copied its staging directory there) from the staging directory itself, when that copy
    verifies in full under ``key``. Returns the staging directory used, or None (nothing
    changed) when there is none or it does not verify."""
    exp_dir = Path(exp_dir)
    try:
        staging = Path((exp_dir / STAGING_NOTE).read_text().strip())
    except (OSError, UnicodeDecodeError):
        return None
    # Ray's layout: <session>/artifacts/<timestamp>/<experiment>/driver_artifacts; another
    # experiment's (or study's) staging copy, though signed, is not this experiment's state
    if (
        not staging.is_absolute()
        or staging.name != "driver_artifacts"
        or staging.parent.name != exp_dir.name
        or not staging.is_dir()
    ):
        return None
    try:
        verify(staging, key)
    except IntegrityError:
        return None
    files = [p for p in staging.iterdir() if p.is_file()] + list(staging.glob("*/error.pkl"))
    for src in files:
        dst = exp_dir / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".kdstudy-tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)
    verify(exp_dir, key)
    return staging
