"""Teachers and category cost matrices: train, register, load, and cache (driver side).

What a study needs from a teacher, done once on the driver before any trial starts:

1. **A teacher checkpoint.** Either an external file (the CRD/mdistiller CIFAR-100
   checkpoints, methods.md §9: a dict whose ``"model"`` entry is the state dict, or a
   plain state dict), or one from the *teacher registry*: a directory (default
   ``<storage>/teachers``) with one folder per ``<dataset>__<arch>`` holding
   ``ckpt.pth`` (``{"model": state_dict, "meta": {...}}``) and ``meta.json`` (the
   same meta plus the sha256 of ``ckpt.pth``). A registry teacher is trained here
   when allowed (:func:`get_or_train_teacher`).
2. **The category-interrelation cost** of WKD-L (methods.md §5): ``D = 1 − linear
   CKA`` between the teacher's last-stage features of every pair of classes, or the
   alternative ``D_ij = 1 − cos(w_i, w_j)`` over the classifier rows. ``D`` is stored
   *before* sharpening (κ and the cost kind vary per trial) in the teacher's folder,
   keyed by (checkpoint sha256, dataset fingerprint, kind, sampling seed, images per
   class), so that every trial of every study reuses it (:func:`get_cost_matrix`).

**Which images a teacher sees.** A registry teacher is trained on the *tuning* train
split (``val_fraction``/``split_seed`` from the caller) and its accuracy is measured on
that split's held-out validation images. It therefore never sees the validation images
students are tuned on, so the teacher's soft labels on validation images carry no
memorised labels that would flatter the students' validation score. For a final run
(full train set, test set) the same teacher is still valid: it never saw test images.
The cost matrix is built from the same tuning train split (training images, test
transform), so it does not depend on whether the study is a tuning or a final run.

Writes are atomic (temporary file + ``os.replace``): a killed process leaves either
the previous state or the complete new file, never half a checkpoint. Concurrent
requests for the same teacher or the same cost matrix are serialised by ``fcntl.flock``
on a lock file in the registry folder, so two studies starting together do not both
train it.

Where each part lives (this module re-exports their public names and keeps the CLI):
:mod:`study.teacher_registry` (folder layout, lock, sidecar, get-or-train),
:mod:`study.teacher_training` (recipe, learning rate, the CE fit),
:mod:`study.teacher_checkpoint` (sha256, strict load, mismatch report; the file reader
is :func:`trainables.models.load_state_file`), :mod:`study.cost_matrix` (CKA /
classifier-cosine cost and its cache), :mod:`study.locking`; atomic writes are
:mod:`trainables.fsutil`.

CLI (trains or reuses a registry teacher, prints its accuracy)::

    python study/teacher.py --dataset digits --arch cnn_large [--epochs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":
    # Run as a file from a checkout where the package is not installed: make the
    # repository root importable (the installed package is preferred when present).
    try:
        import study.teacher_registry  # noqa: F401
        import trainables  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from study.cli_checks import OneLineParser
from study.cost_matrix import (
    COST_KINDS,
    CostKind,
    CostMatrix,
    _find_classifier,
    build_cost_matrix,
    cached_cost,
    classifier_cosine_cost,
    cost_cache_key,
    cost_from_features,
    default_max_per_class,
    get_cost_matrix,
    select_images_per_class,
)
from study.teacher_checkpoint import (
    TeacherCheckpointError,
    check_state_dict,
    load_teacher,
    sha256_file,
)
from study.teacher_registry import (
    CKPT_NAME,
    LOCK_NAME,
    META_NAME,
    TeacherInfo,
    TeacherNotFoundError,
    get_or_train_teacher,
    registry_folder,
    save_teacher,
    train_teacher,
)
from study.teacher_training import (
    EMBEDDED_DATASET,
    TeacherRecipe,
    default_recipe,
    evaluate_top1,
    fit_teacher,
    learning_rate,
    teacher_trial_config,
)

if TYPE_CHECKING:  # imported lazily at run time: the data module is heavy and optional here
    from trainables.data import DataBundle

__all__ = [
    "CKPT_NAME",
    "COST_KINDS",
    "EMBEDDED_DATASET",
    "LOCK_NAME",
    "META_NAME",
    "CostKind",
    "CostMatrix",
    "TeacherAndCost",
    "TeacherCheckpointError",
    "TeacherInfo",
    "TeacherNotFoundError",
    "TeacherRecipe",
    "_find_classifier",
    "build_cost_matrix",
    "cached_cost",
    "check_state_dict",
    "classifier_cosine_cost",
    "cost_cache_key",
    "cost_from_features",
    "default_max_per_class",
    "default_recipe",
    "ensure_teacher_and_cost",
    "evaluate_top1",
    "fit_teacher",
    "get_cost_matrix",
    "get_or_train_teacher",
    "learning_rate",
    "load_teacher",
    "main",
    "registry_folder",
    "save_teacher",
    "select_images_per_class",
    "sha256_file",
    "teacher_trial_config",
    "train_teacher",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherAndCost:
    """What a study records before its trials start: absolute paths and hashes."""

    teacher: TeacherInfo
    cost: CostMatrix | None

    def provenance(self) -> dict[str, str]:
        """Flat string parameters for the study's tracking run (``teacher/...``, ``cost/...``)."""
        out = {
            "teacher/ckpt": str(self.teacher.ckpt_path),
            "teacher/sha256": self.teacher.sha256,
            "teacher/arch": self.teacher.arch,
            "teacher/trained_now": str(self.teacher.trained),
        }
        if self.teacher.val_top1 is not None:
            out["teacher/val_top1"] = f"{self.teacher.val_top1:.4f}"
        if self.cost is not None:
            out["cost/path"] = str(self.cost.path)
            out["cost/sha256"] = self.cost.sha256
            out["cost/kind"] = str(self.cost.key["kind"])
            out["cost/seed"] = str(self.cost.key["seed"])
            out["cost/max_per_class"] = str(self.cost.key["max_per_class"])
        return out


def ensure_teacher_and_cost(
    dataset: str,
    arch: str,
    *,
    teachers_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    max_per_class_data: int | None = None,
    download: bool = False,
    teacher_path: str | os.PathLike[str] | None = None,
    allow_train: bool | None = None,
    cost_kind: CostKind | None = "cka",
    cost_seed: int = 0,
    cost_max_per_class: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    train_kwargs: Mapping[str, Any] | None = None,
    lock_timeout: float | None = None,
) -> TeacherAndCost:
    """What a study calls once on the driver before trials start.

    Resolves the teacher — ``teacher_path`` (an external checkpoint, checked by a strict
    load) or the registry entry of :func:`get_or_train_teacher` — and, unless
    ``cost_kind`` is None, the cached cost matrix built from the *tuning* train split
    (``val_fraction``, ``split_seed``; the same for tuning and final runs, see the module
    docstring). The costs of an external teacher are cached in the registry folder
    ``<teachers_dir>/<dataset>__<arch>`` (the checkpoint's own folder may be read-only).
    Returns absolute paths and sha256 hashes for provenance
    (:meth:`TeacherAndCost.provenance`); trials receive the paths, never recompute.
    ``max_per_class_data`` subsamples the dataset itself (``load_data``'s argument; it
    changes the fingerprint), ``cost_max_per_class`` only the cost's images.
    """
    from trainables.data import load_data

    folder = registry_folder(teachers_dir, dataset, arch)
    if teacher_path is not None:
        ckpt = Path(teacher_path).absolute()
        if not ckpt.is_file():
            raise FileNotFoundError(f"external teacher checkpoint not found: {ckpt}")
        teacher = TeacherInfo(
            dataset=dataset,
            arch=arch,
            ckpt_path=ckpt,
            sha256=sha256_file(ckpt),
            num_classes=-1,
            val_top1=None,
            trained=False,
            meta={"external": True},
        )
    else:
        teacher = get_or_train_teacher(
            dataset,
            arch,
            teachers_dir=teachers_dir,
            allow_train=allow_train,
            val_fraction=val_fraction,
            split_seed=split_seed,
            lock_timeout=lock_timeout,
            **{
                "root": root,
                "device": device,
                "download": download,
                "max_per_class": max_per_class_data,
                **(train_kwargs or {}),
            },
        )
    need_data = teacher_path is not None or cost_kind is not None
    if not need_data:
        return TeacherAndCost(teacher, None)
    bundle: DataBundle = load_data(
        dataset,
        root=None if root is None else str(root),
        val_fraction=val_fraction,
        split_seed=split_seed,
        final=False,
        download=download,
        max_per_class=max_per_class_data,
    )
    if teacher_path is not None:
        # Fail here, on the driver, with the full mismatch list, not in every trial.
        load_teacher(arch, bundle.num_classes, teacher.ckpt_path, in_channels=bundle.in_channels)
        teacher = dataclasses.replace(teacher, num_classes=int(bundle.num_classes))
    else:
        if teacher.num_classes != bundle.num_classes:
            raise TeacherCheckpointError(
                f"teacher {teacher.ckpt_path} has {teacher.num_classes} classes, "
                f"dataset {dataset!r} has {bundle.num_classes}"
            )
        # Same split parameters can still mean another split (e.g. another data cap):
        # the fingerprint hashes the split indices, so compare it too.
        trained_on = teacher.meta.get("data_fingerprint")
        if trained_on is not None and trained_on != bundle.fingerprint():
            raise TeacherCheckpointError(
                f"teacher {teacher.ckpt_path} was trained on data split {trained_on}, but this "
                f"study's tuning split is {bundle.fingerprint()} (max_per_class_data="
                f"{max_per_class_data}): it may have trained on this study's validation "
                "images. Use another teachers directory, or retrain with --force."
            )
    if cost_kind is None:
        return TeacherAndCost(teacher, None)
    cost = get_cost_matrix(
        teacher.ckpt_path,
        str(bundle.fingerprint()),
        cost_kind,
        cost_seed,
        cost_max_per_class,
        arch=arch,
        data=bundle.train,
        preset=bundle.preset,
        in_channels=bundle.in_channels,
        device=device,
        batch_size=batch_size,
        cache_dir=folder,
        teacher_sha256=teacher.sha256,
        lock_timeout=lock_timeout,
    )
    return TeacherAndCost(teacher, cost)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python study/teacher.py",
        description="Train (or reuse) a registry teacher and print its validation accuracy.",
    )
    p.add_argument("--dataset", required=True, help="dataset name, e.g. digits, cifar100")
    p.add_argument("--arch", required=True, help="model name, e.g. cnn_large, resnet32x4")
    p.add_argument(
        "--out",
        default="teachers",
        help="teacher registry directory (default: ./teachers); the teacher goes to "
        "<out>/<dataset>__<arch>/",
    )
    p.add_argument("--root", default=None, help="dataset root (not needed for digits)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--epochs", type=int, default=None, help="default: the dataset's recipe")
    p.add_argument("--lr", type=float, default=None, help="default: the dataset's recipe")
    p.add_argument("--batch-size", type=int, default=None, help="default: the dataset's recipe")
    p.add_argument("--lr-schedule", choices=("cosine", "multistep"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--force", action="store_true", help="retrain even if the teacher exists")
    p.add_argument(
        "--cost",
        choices=COST_KINDS,
        action="append",
        default=[],
        help="also build and cache this cost matrix (repeatable)",
    )
    p.add_argument("--cost-seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-epoch log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 refused/invalid)."""
    args = _parser().parse_args(argv)
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_kwargs = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "lr_schedule": args.lr_schedule,
        "seed": args.seed,
    }
    try:
        info = get_or_train_teacher(
            args.dataset,
            args.arch,
            teachers_dir=Path(args.out).absolute(),
            allow_train=True,  # running this command is the explicit permission
            retrain=args.force,
            val_fraction=args.val_fraction,
            split_seed=args.split_seed,
            root=args.root,
            device=device,
            download=args.download,
            **train_kwargs,
        )
        status = "trained" if info.trained else "reused (use --force to retrain)"
        acc = "n/a" if info.val_top1 is None else f"{info.val_top1:.4f}"
        print(f"teacher {args.dataset}/{args.arch}: {status}")
        print(f"val/top1 {acc}")
        print(f"checkpoint {info.ckpt_path}")
        print(f"sha256 {info.sha256}")
        for kind in args.cost:
            res = ensure_teacher_and_cost(
                args.dataset,
                args.arch,
                teachers_dir=Path(args.out).absolute(),
                root=args.root,
                val_fraction=args.val_fraction,
                split_seed=args.split_seed,
                download=args.download,
                allow_train=False,
                cost_kind=kind,
                cost_seed=args.cost_seed,
                device=device,
            )
            assert res.cost is not None
            print(f"cost {kind}: {res.cost.path} ({'cached' if res.cost.cache_hit else 'built'})")
    except (OSError, ValueError) as err:  # refusals, bad checkpoints, missing data
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
