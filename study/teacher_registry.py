"""The teacher registry: one folder per (dataset, architecture), locked, with a sidecar.

A directory (default ``<storage>/teachers``) with one folder per ``<dataset>__<arch>``
holding ``ckpt.pth`` (``{"model": state_dict, "meta": {...}}``, the mdistiller/CRD
layout) and ``meta.json`` (the same meta plus the sha256 of ``ckpt.pth``, written
last: an entry without it is incomplete). A missing teacher is trained here when
allowed (:func:`get_or_train_teacher`, :mod:`study.teacher_training`); concurrent
callers are serialised by ``fcntl.flock`` on the folder's ``.lock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from study.locking import file_lock
from study.teacher_checkpoint import TeacherCheckpointError, sha256_file
from study.teacher_training import EMBEDDED_DATASET, fit_teacher
from trainables.fsutil import atomic_torch_save, atomic_write_bytes

logger = logging.getLogger(__name__)

CKPT_NAME = "ckpt.pth"
META_NAME = "meta.json"
LOCK_NAME = ".lock"


class TeacherNotFoundError(FileNotFoundError):
    """A registry teacher is missing and training it was not allowed."""


@dataclass(frozen=True)
class TeacherInfo:
    """A teacher checkpoint and its provenance.

    ``ckpt_path`` is absolute; ``sha256`` is the hash of that file; ``trained`` tells
    whether this call trained it (False when an existing registry entry was reused).
    """

    dataset: str
    arch: str
    ckpt_path: Path
    sha256: str
    num_classes: int
    val_top1: float | None
    trained: bool
    meta: Mapping[str, Any] = field(default_factory=dict)


def train_teacher(
    dataset: str,
    arch: str,
    *,
    out_dir: str | os.PathLike[str],
    **kwargs: Any,
) -> TeacherInfo:
    """Train a teacher with cross-entropy on the tuning train split and save it to ``out_dir``.

    ``kwargs`` are :func:`study.teacher_training.fit_teacher`'s (recipe overrides,
    ``seed``, ``device``, data split and cap). Writes ``out_dir/ckpt.pth``
    (``{"model": state_dict, "meta": meta}``) and then ``out_dir/meta.json`` (meta +
    ``sha256`` of ``ckpt.pth``), both atomically; an entry counts as complete only when
    ``meta.json`` exists and its hash matches.
    """
    model, meta = fit_teacher(dataset, arch, **kwargs)
    return save_teacher(model, meta, out_dir, trained=True)


def save_teacher(
    model: nn.Module,
    meta: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    trained: bool = False,
) -> TeacherInfo:
    """Write a registry entry: ``ckpt.pth`` then ``meta.json``, each atomically.

    ``ckpt.pth`` = ``{"model": state_dict (CPU tensors), "meta": meta}`` — the
    mdistiller/CRD layout (methods.md §9), so :func:`load_teacher` and other tools read
    it alike. ``meta`` must hold ``arch``, ``dataset`` and ``num_classes`` (plain JSON
    values). ``meta.json`` (meta + ``sha256`` of ``ckpt.pth``) is written last: an entry
    without it is incomplete and treated as missing, so a kill between the two writes
    leaves nothing that could be mistaken for a finished teacher.
    """
    for required in ("arch", "dataset", "num_classes"):
        if required not in meta:
            raise ValueError(f"teacher meta needs {required!r}")
    out = Path(out_dir).absolute()
    ckpt_path = out / CKPT_NAME
    # Weights on the CPU so the checkpoint loads anywhere with map_location="cpu".
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"model": state, "meta": dict(meta)}, ckpt_path)
    digest = sha256_file(ckpt_path)
    sidecar = {**meta, "sha256": digest, "ckpt": CKPT_NAME}
    atomic_write_bytes(out / META_NAME, json.dumps(sidecar, indent=2).encode())
    val = meta.get("val_top1")
    return TeacherInfo(
        dataset=str(meta["dataset"]),
        arch=str(meta["arch"]),
        ckpt_path=ckpt_path,
        sha256=digest,
        num_classes=int(meta["num_classes"]),
        val_top1=None if val is None else float(val),
        trained=trained,
        meta=sidecar,
    )


# --------------------------------------------------------------------------- registry


def registry_folder(teachers_dir: str | os.PathLike[str], dataset: str, arch: str) -> Path:
    """``<teachers_dir>/<dataset>__<arch>``: one registry entry per dataset and architecture.

    ``imagefolder:<path>`` datasets are keyed by the folder's name and a hash of its
    resolved path (``imagefolder-<name>-<sha8>``), so absolute paths work and two trees
    with the same name do not share a teacher.
    """
    if dataset.startswith("imagefolder:"):
        where = Path(dataset.split(":", 1)[1]).expanduser().resolve()
        digest = hashlib.sha256(str(where).encode()).hexdigest()[:8]
        dataset = f"imagefolder-{where.name or 'root'}-{digest}"
    for part, name in ((dataset, "dataset"), (arch, "arch")):
        if not part or "/" in part or os.sep in part or part.startswith("."):
            raise ValueError(f"invalid {name} name for a registry folder: {part!r}")
    return Path(teachers_dir).absolute() / f"{dataset}__{arch}"


def _read_registry_entry(folder: Path, dataset: str, arch: str) -> TeacherInfo | None:
    """The complete entry in ``folder``, or None when it is absent or half-written.

    An entry is complete when ``meta.json`` exists (it is written last); a checkpoint
    whose hash differs from the sidecar's is an error, not a silent retrain: someone
    replaced the weights by hand and results would lose their provenance.
    """
    ckpt = folder / CKPT_NAME
    meta_path = folder / META_NAME
    if not (ckpt.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    digest = sha256_file(ckpt)
    if meta.get("sha256") != digest:
        raise TeacherCheckpointError(
            f"{ckpt}: sha256 {digest[:12]}… differs from {meta_path} "
            f"({str(meta.get('sha256'))[:12]}…); the weights were changed after training. "
            "Delete the folder to retrain, or pass the file as an external checkpoint."
        )
    return TeacherInfo(
        dataset=dataset,
        arch=arch,
        ckpt_path=ckpt,
        sha256=digest,
        num_classes=int(meta["num_classes"]),
        val_top1=None if meta.get("val_top1") is None else float(meta["val_top1"]),
        trained=False,
        meta=meta,
    )


def _check_split(info: TeacherInfo, val_fraction: float, split_seed: int) -> None:
    """Refuse a registry teacher trained on another tuning split: it may have seen the
    validation images the students are now tuned on."""
    got = (info.meta.get("val_fraction"), info.meta.get("split_seed"))
    if got != (val_fraction, split_seed):
        raise TeacherCheckpointError(
            f"teacher {info.ckpt_path} was trained with val_fraction={got[0]}, "
            f"split_seed={got[1]}, but this study uses val_fraction={val_fraction}, "
            f"split_seed={split_seed}: it may have trained on this study's validation "
            "images. Use another teachers directory, or retrain with --force."
        )


def _missing_teacher_message(
    dataset: str, arch: str, folder: Path, *, reason: str, val_fraction: float, split_seed: int
) -> str:
    cmd = (
        f"python study/teacher.py --dataset {dataset} --arch {arch} "
        f"--out {folder.parent} --val-fraction {val_fraction} --split-seed {split_seed}"
    )
    return (
        f"no teacher for dataset {dataset!r}, arch {arch!r}: looked for {folder / CKPT_NAME} "
        f"and {folder / META_NAME}. {reason}\n"
        f"  - train it (hours on a GPU for a CIFAR recipe): {cmd}\n"
        f"  - or allow training it in this call (allow_train=True)\n"
        f"  - or point the study to an existing checkpoint (an mdistiller/CRD "
        f"'ckpt_epoch_240.pth' or a plain state dict) as an external teacher path"
    )


def find_teacher(
    teachers_dir: str | os.PathLike[str],
    dataset: str,
    arch: str,
    val_fraction: float,
    split_seed: int,
) -> TeacherInfo | None:
    """The complete registry entry for (``dataset``, ``arch``), or None; an entry trained
    on another tuning split, or whose weights changed, raises :class:`TeacherCheckpointError`.
    Reads only (``--dry-run`` and the fast path of :func:`get_or_train_teacher`)."""
    folder = registry_folder(teachers_dir, dataset, arch)
    info = _read_registry_entry(folder, dataset, arch)
    if info is not None:
        _check_split(info, val_fraction, split_seed)
    return info


def get_or_train_teacher(
    dataset: str,
    arch: str,
    *,
    teachers_dir: str | os.PathLike[str],
    allow_train: bool | None = None,
    retrain: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    lock_timeout: float | None = None,
    **train_kwargs: Any,
) -> TeacherInfo:
    """The registry teacher for (``dataset``, ``arch``), trained here if missing and allowed.

    ``allow_train``: ``None`` (default) trains only the embedded ``digits`` teacher
    (seconds on a CPU); any other dataset must be allowed explicitly with ``True``,
    because silently starting a 240-epoch training would surprise whoever launched a
    study. ``False`` never trains. A refusal raises :class:`TeacherNotFoundError`
    saying what is missing, where it looked, the command that trains it and how to
    point to an external checkpoint instead.

    The folder's lock file serialises concurrent callers: the second one waits and
    then reuses the first one's teacher (``trained`` False). ``retrain`` replaces an
    existing entry (the CLI's ``--force``). ``train_kwargs`` go to :func:`train_teacher`.
    """
    folder = registry_folder(teachers_dir, dataset, arch)
    may_train = dataset == EMBEDDED_DATASET if allow_train is None else allow_train

    def existing() -> TeacherInfo | None:
        return find_teacher(teachers_dir, dataset, arch, val_fraction, split_seed)

    # Fast path without the lock: a complete entry is immutable once written.
    if not retrain:
        info = existing()
        if info is not None:
            return info
    if not may_train:
        reason = (
            "Training it here was refused (allow_train=False)."
            if allow_train is False
            else f"Only the embedded {EMBEDDED_DATASET!r} teacher is trained without "
            "an explicit allow_train=True."
        )
        raise TeacherNotFoundError(
            _missing_teacher_message(
                dataset,
                arch,
                folder,
                reason=reason,
                val_fraction=val_fraction,
                split_seed=split_seed,
            )
        )
    with file_lock(folder / LOCK_NAME, lock_timeout):
        # Re-check under the lock: another process may have trained it while we waited.
        if not retrain:
            info = existing()
            if info is not None:
                return info
        if retrain:
            # Mark the entry incomplete first: between the two writes of train_teacher a
            # reader must see "missing", not a new checkpoint with the old sidecar.
            with contextlib.suppress(FileNotFoundError):
                (folder / META_NAME).unlink()
        logger.info("training teacher %s/%s into %s", dataset, arch, folder)
        return train_teacher(
            dataset,
            arch,
            out_dir=folder,
            val_fraction=val_fraction,
            split_seed=split_seed,
            **train_kwargs,
        )
