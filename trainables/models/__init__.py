"""The model zoo: one explicit registry, a builder and a feature-shape probe.

* CIFAR zoo (CRD/mdistiller-compatible, methods.md §9): resnet8/20/32/56/110, resnet8x4,
  resnet32x4, wrn_16_2, wrn_40_1, wrn_40_2, vgg8, vgg13, MobileNetV2, ShuffleV1, ShuffleV2,
  ResNet50. ``build(name, 100, weights_path=".../<name>_vanilla/ckpt_epoch_240.pth")``
  loads the shared teacher checkpoints strictly.
* Embedded digits default: cnn_small (student), cnn_large (teacher), 1 input channel.
* torchvision ImageNet models (methods.md §8): tv_resnet18/34/50, tv_mobilenet_v2.

Every model returns ``ModelOutputs(logits, features, pooled)`` (ARCHITECTURE.md "Model
contract") and has ``classifier()`` -> its final ``nn.Linear``.
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from trainables.models.base import ZooModel
from trainables.models.cifar_resnet import (
    resnet8,
    resnet8x4,
    resnet20,
    resnet32,
    resnet32x4,
    resnet56,
    resnet110,
)
from trainables.models.mobilenetv2 import MobileNetV2
from trainables.models.resnet_cifar_bottleneck import ResNet50
from trainables.models.shufflenet import ShuffleV1, ShuffleV2
from trainables.models.small import cnn_large, cnn_small
from trainables.models.tv import tv_mobilenet_v2, tv_resnet18, tv_resnet34, tv_resnet50
from trainables.models.vgg import vgg8, vgg13
from trainables.models.wrn import wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "MODELS",
    "CheckpointError",
    "ZooModel",
    "build",
    "feature_shapes",
    "load_state_file",
]

# name -> factory(num_classes, in_channels=<native default>) -> ZooModel
MODELS: dict[str, Callable[..., ZooModel]] = {
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleV1,
    "ShuffleV2": ShuffleV2,
    "ResNet50": ResNet50,
    "cnn_small": cnn_small,
    "cnn_large": cnn_large,
    "tv_resnet18": tv_resnet18,
    "tv_resnet34": tv_resnet34,
    "tv_resnet50": tv_resnet50,
    "tv_mobilenet_v2": tv_mobilenet_v2,
}


def _factory(name: str) -> Callable[..., ZooModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}") from None


def default_in_channels(name: str) -> int:
    """The model's native input channels: 1 for the digits nets, 3 for everything else."""
    default = inspect.signature(_factory(name)).parameters["in_channels"].default
    return int(default)


class CheckpointError(ValueError):
    """A file is not a readable checkpoint holding a state dict (the message names it)."""


def _first_sentence(err: BaseException) -> str:
    """torch's load errors run to a page (and suggest weights_only=False, which would run
    the file's code): keep their first sentence."""
    text = " ".join(str(err).split())
    return text.split(". ", 1)[0][:200]


def load_state_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The one checkpoint reader: the state dict in ``path``, read with
    ``torch.load(map_location="cpu", weights_only=True)`` (no code in the file runs).

    Accepts the CRD/mdistiller layout ``{"model": state_dict, ...}`` (methods.md §9, e.g.
    ``ckpt_epoch_240.pth``; also the study's teacher registry ``ckpt.pth``),
    ``{"state_dict": state_dict, ...}`` or a bare state dict (torchvision weight files).
    A ``module.`` prefix on *every* key (a model saved from ``DataParallel``) is removed;
    a partial prefix is left alone so a strict load reports it. An empty, truncated or
    non-checkpoint file, or one pickling other objects, raises :class:`CheckpointError`
    naming ``path``.
    """
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as err:
        if isinstance(err, OSError) and not os.path.isfile(path):
            raise  # missing file or a folder: the OS error already says so
        with open(path, "rb") as fh:
            head = fh.read(4)
        # A torch file is a zip archive ("PK") or a legacy protocol-2 pickle (0x80): if
        # the weights-only unpickler refused its pickle, it holds objects beyond tensors.
        if isinstance(err, pickle.UnpicklingError) and (head[:2] == b"PK" or head[:1] == b"\x80"):
            raise CheckpointError(
                f"{path}: cannot be read with weights_only=True (it pickles objects other "
                f"than tensors and plain containers); re-save just the state dict: "
                f"{_first_sentence(err)}"
            ) from err
        what = "an empty file" if not head else f"{type(err).__name__}: {_first_sentence(err)}"
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (empty, truncated or another kind "
            f"of file): {what}"
        ) from err
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a state dict or a dict with a 'model' state dict "
            f"(mdistiller/CRD format), got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def build(
    name: str,
    num_classes: int,
    *,
    in_channels: int | None = None,
    weights_path: str | os.PathLike[str] | None = None,
) -> ZooModel:
    """Build model ``name`` for ``num_classes`` classes, optionally loading local weights.

    ``in_channels`` defaults to the model's native value (3, or 1 for cnn_small/cnn_large).
    ``weights_path`` is read by :func:`load_state_file`; the CIFAR zoo loads strictly (the
    shared ``<name>_vanilla/ckpt_epoch_240.pth`` teachers), torchvision models accept
    ImageNet files with a 1000-way head for another ``num_classes`` (head kept fresh).
    Raises ``ValueError`` for an unknown name, listing the allowed names sorted.
    """
    factory = _factory(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    channels = default_in_channels(name) if in_channels is None else in_channels
    model = factory(num_classes=num_classes, in_channels=channels)
    if weights_path is not None:
        model.load_pretrained(load_state_file(weights_path))
    return model


def feature_shapes(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
) -> list[tuple[int, ...]]:
    """Per-stage feature shapes ``(C, H, W)`` (no batch dim) for input ``(C, H, W)``.

    Computed by a dry forward pass of one zero image in eval mode (no BN statistics are
    touched) on CPU; used to size projectors (e.g. WKD-F / KD2M feature adapters).
    """
    model = build(name, num_classes, in_channels=input_shape[0])
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape))
    return [tuple(f.shape[1:]) for f in out.features]
