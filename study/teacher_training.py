"""How a registry teacher is trained: its recipe, learning rate and cross-entropy fit.

A registry teacher trains with cross-entropy on the *tuning* train split
(``val_fraction``/``split_seed`` from the caller) and its accuracy is measured on that
split's held-out validation images, so it never sees the validation images students
are tuned on (see :mod:`study.teacher`).

The recipe is expressed as a CE-only :class:`trainables.config.TrialConfig`
(:func:`teacher_trial_config`) and the learning rate is the trial loop's
:func:`trainables.loop.lr_at`: one LR function for teachers and students. The epoch
loop itself is still this module's :func:`fit_teacher`, because
``trainables.loop.run_training`` always builds and runs a teacher network; once it
accepts a config without a teacher, :func:`fit_teacher` becomes a call to it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # imported lazily at run time: the data module and the loop are heavy
    from trainables.config import TrialConfig
    from trainables.data import DataPreset, ImageSet

logger = logging.getLogger(__name__)

# The embedded dataset: small enough that training its teacher on demand is cheap
# (seconds on a CPU), so it is the only one trained without an explicit permission.
EMBEDDED_DATASET = "digits"


@dataclass(frozen=True)
class TeacherRecipe:
    """Optimiser and LR schedule of a teacher (methods.md §9 unless noted).

    ``milestones`` are fractions of the planned epochs (150/240, 180/240, 210/240 of
    the CIFAR recipe) so that a short run keeps the recipe's shape.
    """

    epochs: int
    lr: float
    batch_size: int
    lr_schedule: Literal["cosine", "multistep"]
    momentum: float = 0.9  # methods.md §9
    weight_decay: float = 5e-4  # methods.md §9
    milestones: tuple[float, ...] = (150 / 240, 180 / 240, 210 / 240)  # methods.md §9
    lr_decay: float = 0.1  # methods.md §9: × 0.1 at each milestone


def default_recipe(dataset: str) -> TeacherRecipe:
    """The default teacher recipe for ``dataset``.

    Every dataset except the embedded one follows the CIFAR-100 recipe of methods.md §9
    (240 epochs, batch 64, lr 0.05, × 0.1 at 150/180/210). The embedded ``digits`` set
    (1 797 images of 8×8) plateaus within a few dozen epochs, so it uses 30 epochs with a
    cosine LR schedule, lr 0.05, batch 64 (our choice; measured for ``cnn_large``: 0.979
    top-1 on the tuning validation split in 4 s on an idle 2-core CPU).
    """
    if dataset == EMBEDDED_DATASET:
        return TeacherRecipe(epochs=30, lr=0.05, batch_size=64, lr_schedule="cosine")
    return TeacherRecipe(epochs=240, lr=0.05, batch_size=64, lr_schedule="multistep")


def _optim_dict(recipe: TeacherRecipe) -> dict[str, Any]:
    """The recipe's optimiser as a ``TrialConfig.optim`` mapping (plain SGD, no warm-up)."""
    return {
        "lr": recipe.lr,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "nesterov": False,
        "lr_schedule": recipe.lr_schedule,
        "milestones": list(recipe.milestones),
        "decay": recipe.lr_decay,
        "warmup": 0.0,
        "lr_min": 0.0,
    }


def teacher_trial_config(
    recipe: TeacherRecipe,
    *,
    dataset: str,
    arch: str,
    root: str | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    max_per_class: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> TrialConfig:
    """The teacher's training as a CE-only trial config: ``arch`` is the trained network
    (``student``), the data is the tuning split (``final`` False), the optimiser is the
    recipe's. ``teacher`` names the same ``arch`` without a checkpoint: a CE-only
    criterion never reads it."""
    from trainables.config import TrialConfig

    return TrialConfig.from_dict(
        {
            "epochs": recipe.epochs,
            "seed": seed,
            "device": device,
            "final": False,  # the tuning split: the teacher must not see the validation images
            "data": {
                "dataset": dataset,
                "root": root,
                "download": download,
                "val_fraction": val_fraction,
                "split_seed": split_seed,
                "batch_size": recipe.batch_size,
                "max_per_class": max_per_class,
            },
            "teacher": {"arch": arch, "checkpoint": None},
            "student": {"arch": arch, "checkpoint": None},
            "optim": _optim_dict(recipe),
            "losses": {"ce": {"weight": 1.0}},
            "output": {"keep_best": False, "keep_last": False, "save_logits": False},
        }
    )


def learning_rate(recipe: TeacherRecipe, epoch: int, num_epochs: int) -> float:
    """Learning rate of the 1-based ``epoch`` out of ``num_epochs``: the trial loop's
    :func:`trainables.loop.lr_at` of the recipe.

    ``multistep`` follows mdistiller's ``adjust_learning_rate``: the number of decays is
    the number of milestones strictly before ``epoch`` (epoch 151 of 240 is the first
    at 0.1×). ``cosine`` decays from ``lr`` at epoch 1 towards 0, never reaching it.
    """
    from trainables.config import TrialConfig
    from trainables.loop import lr_at

    cfg = TrialConfig.from_dict(
        {"epochs": num_epochs, "optim": _optim_dict(recipe), "losses": {"ce": {}}}
    )
    return lr_at(cfg, epoch)


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


def fit_teacher(
    dataset: str,
    arch: str,
    *,
    root: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    lr_schedule: Literal["cosine", "multistep"] | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    max_per_class: int | None = None,
    download: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` with cross-entropy on the tuning train split; return it and its meta.

    Recipe (methods.md §9): SGD momentum 0.9, weight decay 5e-4; lr and epochs from
    :func:`default_recipe` unless given; ``lr_schedule: multistep`` decays × 0.1 at 150/240,
    180/240 and 210/240 of the planned epochs, ``cosine`` anneals per epoch. Each epoch's rate is
    :func:`trainables.loop.lr_at` of :func:`teacher_trial_config`. ``meta["val_top1"]``
    is the top-1 on the tuning split's validation images. ``seed`` drives initialisation
    and batch order through the trial loop's streams (``derive_seed(seed,
    "student_init")`` for the weights, ``derive_seed(seed, "data")`` for order and
    augmentation; ``drop_last`` as there), inside a forked RNG so the caller's global
    RNG is untouched. Nothing is written (:func:`study.teacher.train_teacher` saves).
    """
    from trainables.data import load_data
    from trainables.loop import run_training
    from trainables.models import build

    base = default_recipe(dataset)
    recipe = dataclasses.replace(
        base,
        epochs=base.epochs if epochs is None else epochs,
        lr=base.lr if lr is None else lr,
        batch_size=base.batch_size if batch_size is None else batch_size,
        lr_schedule=base.lr_schedule if lr_schedule is None else lr_schedule,
        momentum=base.momentum if momentum is None else momentum,
        weight_decay=base.weight_decay if weight_decay is None else weight_decay,
    )
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {recipe.epochs}")
    dev = torch.device(device)
    cfg = teacher_trial_config(
        recipe,
        dataset=dataset,
        arch=arch,
        root=None if root is None else str(root),
        download=download,
        val_fraction=val_fraction,
        split_seed=split_seed,
        max_per_class=max_per_class,
        seed=seed,
        device=str(dev),
    )
    bundle = load_data(
        dataset,
        root=cfg.data.root,
        val_fraction=val_fraction,
        split_seed=split_seed,
        final=False,  # the tuning split: the teacher must not see the validation images
        download=download,
        max_per_class=max_per_class,
    )
    started = time.monotonic()
    last: dict[str, Any] = {}

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        last.update(metrics=metrics, student=state["student"])
        logger.info(
            "teacher %s/%s epoch %d/%d lr %.4g train/loss %.4f val/top1 %.2f",
            dataset,
            arch,
            int(metrics["epoch"]),
            recipe.epochs,
            metrics["lr"],
            metrics["train/loss"],
            metrics["val/top1"],
        )

    # the one training loop (CE-only criterion: no teacher is built), in a forked RNG so
    # the caller's global generator is untouched
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        run_training(cfg, report, device=dev)
        model = build(arch, bundle.num_classes, in_channels=bundle.in_channels).to(dev)
    model.load_state_dict(last["student"])
    model.eval()
    val_top1 = float(last["metrics"]["val/top1"]) / 100.0  # the loop reports percent
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
        "lr_schedule": recipe.lr_schedule,
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
    return model, meta
