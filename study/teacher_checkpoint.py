"""Teacher checkpoint files on the driver: their sha256 and the strict, checked load.

Reading the file is :func:`trainables.models.load_state_file` (the one checkpoint reader:
mdistiller/CRD ``{"model": state_dict}``, ``{"state_dict": ...}``, plain or
``DataParallel`` state dicts, ``weights_only=True``); this module adds the mismatch
report a user pointing at the wrong checkpoint needs and the teacher's frozen eval mode.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from trainables.models import CheckpointError


class TeacherCheckpointError(CheckpointError):
    """A checkpoint does not match the architecture it is loaded into (or is unreadable)."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    from trainables.models import build, load_state_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        state = load_state_file(path)
    except CheckpointError as err:
        raise TeacherCheckpointError(str(err)) from err
    model = build(arch, num_classes, in_channels=in_channels)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
