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

CLI (trains or reuses a registry teacher, prints its accuracy)::

    python study/teacher.py --dataset digits --arch cnn_large [--epochs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # imported lazily at run time: the data module is heavy and optional here
    from trainables.data import DataBundle, DataPreset, ImageSet

logger = logging.getLogger(__name__)

CostKind = Literal["cka", "classifier_cosine"]
COST_KINDS: tuple[str, ...] = ("cka", "classifier_cosine")

# The embedded dataset: small enough that training its teacher on demand is cheap
# (seconds on a CPU), so it is the only one trained without an explicit permission.
EMBEDDED_DATASET = "digits"

CKPT_NAME = "ckpt.pth"
META_NAME = "meta.json"
LOCK_NAME = ".lock"


class TeacherNotFoundError(FileNotFoundError):
    """A registry teacher is missing and training it was not allowed."""


class TeacherCheckpointError(ValueError):
    """A checkpoint does not match the architecture it is loaded into."""


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class TeacherRecipe:
    """Optimiser and schedule of a teacher (methods.md §9 unless noted).

    ``milestones`` are fractions of the planned epochs (150/240, 180/240, 210/240 of
    the CIFAR recipe) so that a short run keeps the recipe's shape.
    """

    epochs: int
    lr: float
    batch_size: int
    schedule: Literal["cosine", "multistep"]
    momentum: float = 0.9  # methods.md §9
    weight_decay: float = 5e-4  # methods.md §9
    milestones: tuple[float, ...] = (150 / 240, 180 / 240, 210 / 240)  # methods.md §9
    lr_decay: float = 0.1  # methods.md §9: × 0.1 at each milestone


def default_recipe(dataset: str) -> TeacherRecipe:
    """The default teacher recipe for ``dataset``.

    Every dataset except the embedded one follows the CIFAR-100 recipe of methods.md §9
    (240 epochs, batch 64, lr 0.05, × 0.1 at 150/180/210). The embedded ``digits`` set
    (1 797 images of 8×8) plateaus within a few dozen epochs, so it uses 30 epochs with a
    cosine schedule, lr 0.05, batch 64 (our choice; measured for ``cnn_large``: 0.979
    top-1 on the tuning validation split in 4 s on an idle 2-core CPU).
    """
    if dataset == EMBEDDED_DATASET:
        return TeacherRecipe(epochs=30, lr=0.05, batch_size=64, schedule="cosine")
    return TeacherRecipe(epochs=240, lr=0.05, batch_size=64, schedule="multistep")


def learning_rate(recipe: TeacherRecipe, epoch: int, num_epochs: int) -> float:
    """Learning rate of the 1-based ``epoch`` out of ``num_epochs``.

    ``multistep`` follows mdistiller's ``adjust_learning_rate``: the number of decays is
    the number of milestones strictly before ``epoch`` (epoch 151 of 240 is the first
    at 0.1×). ``cosine`` decays from ``lr`` at epoch 1 towards 0, never reaching it.
    """
    if recipe.schedule == "multistep":
        steps = sum(epoch > round(m * num_epochs) for m in recipe.milestones)
        return recipe.lr * recipe.lr_decay**steps
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / num_epochs))
    raise ValueError(f"unknown schedule {recipe.schedule!r}; use 'cosine' or 'multistep'")


# --------------------------------------------------------------------------- results


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


@dataclass(frozen=True)
class CostMatrix:
    """A cached cost matrix: the raw ``D`` (float32, before sharpening) and its file."""

    matrix: Tensor
    path: Path
    sha256: str
    cache_hit: bool
    key: Mapping[str, Any]


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


# --------------------------------------------------------------------------- file helpers


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the whole new one.

    The temporary file lives in the destination folder because ``os.replace`` is only
    atomic within one file system; ``fsync`` before the rename so a crash after it
    cannot expose an empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through :func:`_atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
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


# --------------------------------------------------------------------------- loading


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a checkpoint: ``obj["model"]`` (mdistiller/CRD and ours),
    ``obj["state_dict"]`` (common elsewhere) or ``obj`` itself when it is one.

    A ``module.`` prefix on *every* key (a model saved from ``DataParallel``) is removed;
    a partial prefix is left alone so the strict load reports it.
    """
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TeacherCheckpointError(
            f"{path}: expected a state dict or a dict with a 'model' state dict "
            f"(mdistiller/CRD format), got {type(obj).__name__}"
            + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _first(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Raise one :class:`TeacherCheckpointError` listing every kind of mismatch.

    ``load_state_dict(strict=True)`` stops at the first shape error and mixes the
    lists; a user pointing at the wrong checkpoint needs all three, with counts, to
    see at once whether it is the wrong architecture, class count or format.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint {source} does not match the model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_first(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_first(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {_first(shapes, 3)}")
    lines.append(
        "  (is it the right architecture, number of classes and input channels? "
        "mdistiller/CRD checkpoints load into the CIFAR zoo unchanged)"
    )
    raise TeacherCheckpointError("\n".join(lines))


def load_teacher(
    arch: str,
    num_classes: int,
    path: str | os.PathLike[str],
    *,
    in_channels: int = 3,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build ``arch`` and load a teacher checkpoint into it, strictly.

    Accepts the mdistiller/CRD format (``{"model": state_dict, ...}``, methods.md §9),
    this module's registry format (same shape) or a plain state dict. The file is read
    with ``torch.load(map_location="cpu", weights_only=True)``: no code in a downloaded
    checkpoint runs. Mismatches raise :class:`TeacherCheckpointError` listing missing
    keys, unexpected keys and shape mismatches. The teacher is returned on ``device``,
    in eval mode with ``requires_grad`` False (methods.md §9: teacher always in eval).
    """
    from trainables.models import build

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TeacherCheckpointError(
            f"{path}: cannot be read with weights_only=True (it pickles objects other than "
            f"tensors and plain containers); re-save just the state dict: {err}"
        ) from err
    state = _extract_state_dict(obj, path)
    model = build(arch, num_classes, in_channels=in_channels)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate_top1(
    model: nn.Module,
    data: ImageSet,
    preset: DataPreset,
    *,
    device: torch.device | str,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``data`` with the test transform."""
    from trainables.data import BatchLoader

    was_training = model.training
    model.eval()
    loader = BatchLoader(data, preset, batch_size, torch.device(device), train=False, seed=0)
    correct = 0
    total = 0
    for x, y in loader.epoch(1):
        correct += int((model(x).logits.argmax(dim=1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluation set is empty")
    return correct / total


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG ``fork_rng`` must restore: all of them, because
    ``torch.manual_seed`` reseeds every visible GPU, not just the training one."""
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


def train_teacher(
    dataset: str,
    arch: str,
    *,
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    schedule: Literal["cosine", "multistep"] | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    max_per_class: int | None = None,
    download: bool = False,
) -> TeacherInfo:
    """Train a teacher with cross-entropy on the tuning train split and save it to ``out_dir``.

    Recipe (methods.md §9): SGD momentum 0.9, weight decay 5e-4; lr and epochs from
    :func:`default_recipe` unless given; ``multistep`` decays × 0.1 at 150/240, 180/240
    and 210/240 of the planned epochs, ``cosine`` anneals per epoch. Accuracy is the
    top-1 on the tuning split's validation images (see the module docstring for why the
    teacher never trains on them). ``seed`` drives initialisation and batch order,
    inside a forked RNG so the caller's global RNG is untouched.

    Writes ``out_dir/ckpt.pth`` (``{"model": state_dict, "meta": meta}``) and then
    ``out_dir/meta.json`` (meta + ``sha256`` of ``ckpt.pth``), both atomically; an entry
    counts as complete only when ``meta.json`` exists and its hash matches.
    """
    from trainables.data import BatchLoader, load_data
    from trainables.models import build

    base = default_recipe(dataset)
    recipe = dataclasses.replace(
        base,
        epochs=base.epochs if epochs is None else epochs,
        lr=base.lr if lr is None else lr,
        batch_size=base.batch_size if batch_size is None else batch_size,
        schedule=base.schedule if schedule is None else schedule,
        momentum=base.momentum if momentum is None else momentum,
        weight_decay=base.weight_decay if weight_decay is None else weight_decay,
    )
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {recipe.epochs}")
    dev = torch.device(device)
    bundle = load_data(
        dataset,
        root=None if root is None else str(root),
        val_fraction=val_fraction,
        split_seed=split_seed,
        final=False,  # the tuning split: the teacher must not see the validation images
        download=download,
        max_per_class=max_per_class,
    )
    started = time.monotonic()
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(seed)
        model = build(arch, bundle.num_classes, in_channels=bundle.in_channels).to(dev)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
        loader = BatchLoader(
            bundle.train, bundle.preset, recipe.batch_size, dev, train=True, seed=seed
        )
        val_top1 = 0.0
        for epoch in range(1, recipe.epochs + 1):
            lr_now = learning_rate(recipe, epoch, recipe.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            model.train()
            loss_sum, seen = 0.0, 0
            for x, y in loader.epoch(epoch):
                loss = nn.functional.cross_entropy(model(x).logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * int(y.numel())
                seen += int(y.numel())
            val_top1 = evaluate_top1(model, bundle.eval, bundle.preset, device=dev)
            logger.info(
                "teacher %s/%s epoch %d/%d lr %.4g train/loss %.4f val/top1 %.4f",
                dataset,
                arch,
                epoch,
                recipe.epochs,
                lr_now,
                loss_sum / max(seen, 1),
                val_top1,
            )
    meta: dict[str, Any] = {
        "arch": arch,
        "dataset": dataset,
        "num_classes": int(bundle.num_classes),
        "classes": [str(c) for c in bundle.train.classes],
        "in_channels": int(bundle.in_channels),
        "image_size": int(bundle.image_size),
        "val_top1": float(val_top1),
        "eval_split": "tuning validation split",
        "epochs": recipe.epochs,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "schedule": recipe.schedule,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "seed": seed,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "max_per_class": max_per_class,
        "data_fingerprint": str(bundle.fingerprint()),
        "torch_version": str(torch.__version__),
        "train_seconds": round(time.monotonic() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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
    _atomic_torch_save({"model": state, "meta": dict(meta)}, ckpt_path)
    digest = sha256_file(ckpt_path)
    sidecar = {**meta, "sha256": digest, "ckpt": CKPT_NAME}
    _atomic_write_bytes(out / META_NAME, json.dumps(sidecar, indent=2).encode())
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
        info = _read_registry_entry(folder, dataset, arch)
        if info is not None:
            _check_split(info, val_fraction, split_seed)
        return info

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
    with _file_lock(folder / LOCK_NAME, lock_timeout):
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


# --------------------------------------------------------------------------- cost matrices


def default_max_per_class(num_classes: int) -> int:
    """Images per class for the CKA cost: ``clamp(50 000 // C, 50, 500)``.

    One rule covering methods.md §5's cases: all images for ≤ 100 classes up to a cap of
    500 (CIFAR-100's 500 training images per class; CIFAR-10's 5 000 are capped, which
    keeps a 10-class cost as cheap as a 100-class one), and 50 for 1 000 classes (the
    methods.md §5 example for ImageNet). In between the feature pass sees about 50 000
    images in total.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return max(50, min(500, 50_000 // num_classes))


def select_images_per_class(
    labels: Tensor, num_classes: int, *, seed: int, max_per_class: int | None
) -> Tensor:
    """Indices ``[C, n]`` of ``n`` images per class, chosen by a seeded permutation.

    ``n`` = min(smallest class count, ``max_per_class``) so every class has the same
    number of rows (methods.md §5: truncate to the smallest class). Row k of class i is
    paired with row k of class j in the CKA, so the choice *and order* matter: one
    ``torch.Generator`` seeded with ``seed`` permutes the classes in label order, which
    makes the selection a pure function of (labels, seed, max_per_class).
    """
    labels = labels.detach().to("cpu", torch.int64)
    counts = torch.bincount(labels, minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"labels go up to {counts.numel() - 1} but num_classes={num_classes}")
    n = int(counts.min())
    if max_per_class is not None:
        n = min(n, int(max_per_class))
    if n < 2:
        empty = [c for c in range(num_classes) if int(counts[c]) < 2][:10]
        raise ValueError(
            f"the CKA cost needs at least 2 images per class; classes {empty} have fewer "
            f"(counts {counts.tolist()[:10]}…, max_per_class={max_per_class})"
        )
    order = torch.sort(labels, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for c in range(num_classes):
        members = order[int(starts[c]) : int(starts[c]) + int(counts[c])]
        rows.append(members[torch.randperm(members.numel(), generator=gen)[:n]])
    return torch.stack(rows)


def cost_from_features(features: Tensor | Sequence[Tensor]) -> Tensor:
    """``D = 1 − linear CKA`` (methods.md §5) from per-class teacher features.

    ``features``: ``[C, n, ch, h, w]`` feature maps (or ``[C, n, d]`` vectors), or a
    sequence of per-class ``[n_c, ch, h, w]`` / ``[n_c, d]`` tensors (truncated to the
    smallest ``n_c``). Maps become one row per (image, spatial position) and one column
    per channel, rows ordered image-major so that classes pair by image index; the CKA
    itself (centring, normalisation, symmetry, zero diagonal) is
    :func:`trainables.losses.functional.category_cost`. Returns float32 ``[C, C]``.
    """
    from trainables.losses.functional import category_cost

    if isinstance(features, Tensor):
        per_class: Sequence[Tensor] = list(features.unbind(0))
    else:
        per_class = list(features)
    if not per_class:
        raise ValueError("no classes")
    n = min(int(f.shape[0]) for f in per_class)
    mats = []
    for f in per_class:
        f = f[:n]
        if f.dim() == 4:  # [n, ch, h, w] -> [(n·h·w), ch], image-major rows
            f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        elif f.dim() != 2:
            raise ValueError(f"per-class features must be [n, ch, h, w] or [n, d], got {f.shape}")
        mats.append(f)
    return category_cost(torch.stack(mats)).to(torch.float32)


def classifier_cosine_cost(weight: Tensor) -> Tensor:
    """``D_ij = 1 − cos(w_i, w_j)`` over the classifier rows ``weight [C, d]`` (methods.md §3).

    The raw cosine distance lies in [0, 2] and is kept so (not clamped to [0, 1]):
    WKD-L's sharpening ``1 − exp(−κD)`` maps it into [0, 1) anyway and ``relu(C) +
    1e-8`` needs no upper bound, while clamping would merge every pair of
    anti-correlated classes into one value. Computed in float64, then symmetrised,
    clipped to [0, 2] against rounding and given an exact zero diagonal. float32 out.
    """
    if weight.dim() != 2:
        raise ValueError(f"classifier weight must be [C, d], got {tuple(weight.shape)}")
    w = nn.functional.normalize(weight.detach().to(torch.float64), dim=1)
    d = 1.0 - w @ w.T
    d = 0.5 * (d + d.T)
    d = d.clamp(0.0, 2.0)
    d.fill_diagonal_(0.0)
    return d.to(torch.float32)


def _find_classifier(teacher: nn.Module) -> nn.Linear:
    classifier = getattr(teacher, "classifier", None)
    if callable(classifier) and not isinstance(classifier, nn.Module):
        layer = classifier()
    else:
        layer = classifier
    if not isinstance(layer, nn.Linear):
        raise TypeError(
            f"{type(teacher).__name__}.classifier() must return the final nn.Linear, "
            f"got {type(layer).__name__}"
        )
    return layer


@torch.no_grad()
def build_cost_matrix(
    teacher: nn.Module,
    data: ImageSet,
    preset: DataPreset,
    kind: CostKind,
    *,
    seed: int = 0,
    max_per_class: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Tensor:
    """The raw category cost ``D`` (float32 ``[C, C]``, before sharpening), methods.md §5.

    ``kind="cka"``: the teacher in eval mode runs on ``data`` (the *training* images)
    with the test transform (normalisation only, via ``BatchLoader(train=False)``); per
    class ``n`` images chosen by :func:`select_images_per_class` (seed ``seed``,
    ``max_per_class`` default :func:`default_max_per_class`); its last-stage features
    give ``D = 1 − CKA`` (:func:`cost_from_features`). ``kind="classifier_cosine"``:
    :func:`classifier_cosine_cost` of the classifier rows (no data needed).

    Memory: the CKA keeps ``C·n·h·w·ch`` floats (about 3 GB for RN32x4 on CIFAR-100's
    450 × 64 rows × 256 channels per class); lower ``max_per_class`` if that is too much.
    """
    from trainables.data import BatchLoader

    if kind == "classifier_cosine":
        return classifier_cosine_cost(_find_classifier(teacher).weight)
    if kind != "cka":
        raise ValueError(f"unknown cost kind {kind!r}; use one of {COST_KINDS}")
    num_classes = len(data.classes)
    cap = default_max_per_class(num_classes) if max_per_class is None else max_per_class
    index = select_images_per_class(data.labels, num_classes, seed=seed, max_per_class=cap)
    flat = index.reshape(-1)
    subset = data.subset(flat)
    dev = torch.device(device)
    was_training = teacher.training
    teacher.eval()
    loader = BatchLoader(subset, preset, batch_size, dev, train=False, seed=seed)
    chunks = []
    seen = 0
    for x, y in loader.epoch(1):
        chunks.append(teacher(x).features[-1].float())
        # The loader must keep the order (rows pair by image index): check it cheaply.
        if not torch.equal(y.cpu(), subset.labels[seen : seen + y.numel()]):
            raise RuntimeError("BatchLoader(train=False) reordered images; cannot pair rows")
        seen += y.numel()
    teacher.train(was_training)
    feats = torch.cat(chunks)
    return cost_from_features(feats.reshape(index.shape[0], index.shape[1], *feats.shape[1:]))


def cost_cache_key(
    teacher_sha256: str, dataset_key: str, kind: str, seed: int, max_per_class: int | None
) -> dict[str, Any]:
    """The fields identifying a cached cost (methods.md §5) and, under ``"id"``, their
    short hash used in the file name ``cost_<id>.pt``.

    ``seed`` and ``max_per_class`` do not change the classifier-cosine cost; they are
    normalised to 0/None for that kind so that it is computed once per teacher.
    """
    if kind not in COST_KINDS:
        raise ValueError(f"unknown cost kind {kind!r}; use one of {COST_KINDS}")
    if kind == "classifier_cosine":
        seed, max_per_class = 0, None
    key: dict[str, Any] = {
        "teacher_sha256": teacher_sha256,
        "dataset": str(dataset_key),
        "kind": kind,
        "seed": int(seed),
        "max_per_class": None if max_per_class is None else int(max_per_class),
    }
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return key


def cached_cost(
    cache_dir: str | os.PathLike[str],
    key: Mapping[str, Any],
    compute: Callable[[], Tensor],
    *,
    lock_timeout: float | None = None,
) -> CostMatrix:
    """Return the cost stored under ``key`` in ``cache_dir`` or compute and store it.

    ``cost_<id>.pt`` holds the bare ``[C, C]`` float32 tensor, so a trial reads it with a
    plain ``torch.load(path, weights_only=True)``; ``cost_<id>.json`` (written second)
    holds the key, the shape and the sha256 of the ``.pt``. A hit needs both files, the
    same key (guards against a hash-prefix collision) and a matching sha256; anything
    else is rebuilt. The compute runs under a per-key lock so concurrent studies build
    it once; both writes are atomic.
    """
    folder = Path(cache_dir).absolute()
    path = folder / f"cost_{key['id']}.pt"
    sidecar = path.with_suffix(".json")

    def read() -> CostMatrix | None:
        if not (path.is_file() and sidecar.is_file()):
            return None
        try:
            info = json.loads(sidecar.read_text())
            digest = sha256_file(path)
            if info.get("key") != dict(key) or info.get("sha256") != digest:
                logger.warning("cost cache %s does not match its key or hash; rebuilding", path)
                return None
            d = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
            # A damaged entry is rebuilt rather than failing the study.
            logger.warning("ignoring unreadable cost cache %s: %s", path, err)
            return None
        if not isinstance(d, Tensor):
            return None
        return CostMatrix(d, path, digest, True, dict(key))

    hit = read()
    if hit is not None:
        return hit
    with _file_lock(folder / f"cost_{key['id']}.lock", lock_timeout):
        hit = read()
        if hit is not None:
            return hit
        d = compute().detach().to("cpu", torch.float32).contiguous()
        if d.dim() != 2 or d.shape[0] != d.shape[1]:
            raise ValueError(f"cost matrix must be square, got {tuple(d.shape)}")
        _atomic_torch_save(d, path)
        digest = sha256_file(path)
        record = {"key": dict(key), "sha256": digest, "shape": list(d.shape)}
        _atomic_write_bytes(sidecar, json.dumps(record, indent=2).encode())
    return CostMatrix(d, path, digest, False, dict(key))


def get_cost_matrix(
    teacher_ckpt_path: str | os.PathLike[str],
    dataset_key: str,
    kind: CostKind,
    seed: int,
    max_per_class: int | None,
    *,
    arch: str,
    data: ImageSet,
    preset: DataPreset,
    in_channels: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    teacher_sha256: str | None = None,
    lock_timeout: float | None = None,
) -> CostMatrix:
    """The cached raw cost of the teacher in ``teacher_ckpt_path`` (methods.md §5).

    Key: (sha256 of the checkpoint file, ``dataset_key`` — the data bundle's
    fingerprint —, ``kind``, sampling ``seed``, ``max_per_class``); ``max_per_class``
    None means :func:`default_max_per_class` and is resolved before keying, so None and
    the explicit default share one entry. ``cache_dir`` defaults to the checkpoint's
    folder (the registry entry). On a miss the teacher is loaded from the checkpoint
    (:func:`load_teacher`, ``arch``, ``len(data.classes)`` classes) and
    :func:`build_cost_matrix` runs; ``CostMatrix.cache_hit`` tells which happened.
    """
    ckpt = Path(teacher_ckpt_path).absolute()
    digest = teacher_sha256 or sha256_file(ckpt)
    num_classes = len(data.classes)
    if kind == "cka" and max_per_class is None:
        max_per_class = default_max_per_class(num_classes)
    key = cost_cache_key(digest, dataset_key, kind, seed, max_per_class)

    def compute() -> Tensor:
        channels = int(data.images.shape[1]) if in_channels is None else in_channels
        teacher = load_teacher(arch, num_classes, ckpt, in_channels=channels, device=device)
        return build_cost_matrix(
            teacher,
            data,
            preset,
            kind,
            seed=seed,
            max_per_class=max_per_class,
            device=device,
            batch_size=batch_size,
        )

    return cached_cost(
        ckpt.parent if cache_dir is None else cache_dir, key, compute, lock_timeout=lock_timeout
    )


# --------------------------------------------------------------------------- study entry


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
    p = argparse.ArgumentParser(
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
    p.add_argument("--schedule", choices=("cosine", "multistep"), default=None)
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
        "schedule": args.schedule,
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
    # Run as a file from a checkout where the package is not installed: make the
    # repository root importable (the installed package is preferred when present).
    try:
        import trainables  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
