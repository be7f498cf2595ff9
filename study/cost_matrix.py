"""The category cost matrix of WKD-L (methods.md §5) and its on-disk cache.

``D = 1 − linear CKA`` between the teacher's last-stage features of every pair of
classes, or ``D_ij = 1 − cos(w_i, w_j)`` over the classifier rows. ``D`` is stored
*before* sharpening (κ and the cost kind vary per trial), keyed by (checkpoint sha256,
dataset fingerprint, kind, sampling seed, images per class), so that every trial of
every study reuses it (:func:`get_cost_matrix`). The images are the tuning train split
(training images, test transform). Writes are atomic; concurrent builders of one key
are serialised by a per-key lock file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from study.locking import file_lock
from study.teacher_checkpoint import load_teacher, sha256_file
from trainables.fsutil import atomic_torch_save, atomic_write_bytes

if TYPE_CHECKING:  # imported lazily at run time: the data module is heavy
    from trainables.data import DataPreset, ImageSet

logger = logging.getLogger(__name__)

CostKind = Literal["cka", "classifier_cosine"]
COST_KINDS: tuple[str, ...] = ("cka", "classifier_cosine")


@dataclass(frozen=True)
class CostMatrix:
    """A cached cost matrix: the raw ``D`` (float32, before sharpening) and its file."""

    matrix: Tensor
    path: Path
    sha256: str
    cache_hit: bool
    key: Mapping[str, Any]


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
            if not isinstance(info, dict):
                raise ValueError(f"{sidecar} holds a {type(info).__name__}, not a mapping")
            if info.get("key") != dict(key) or info.get("sha256") != digest:
                logger.warning("cost cache %s does not match its key or hash; rebuilding", path)
                return None
            d = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
            # A damaged entry is rebuilt rather than failing the study.
            logger.warning("ignoring unreadable cost cache %s: %s", path, err)
            return None
        if (
            not isinstance(d, Tensor)
            or d.dim() != 2
            or d.shape[0] != d.shape[1]
            or not bool(torch.isfinite(d).all())
        ):
            logger.warning("cost cache %s is not a finite square matrix; rebuilding", path)
            return None
        return CostMatrix(d, path, digest, True, dict(key))

    hit = read()
    if hit is not None:
        return hit
    with file_lock(folder / f"cost_{key['id']}.lock", lock_timeout):
        hit = read()
        if hit is not None:
            return hit
        d = compute().detach().to("cpu", torch.float32).contiguous()
        if d.dim() != 2 or d.shape[0] != d.shape[1]:
            raise ValueError(f"cost matrix must be square, got {tuple(d.shape)}")
        atomic_torch_save(d, path)
        digest = sha256_file(path)
        record = {"key": dict(key), "sha256": digest, "shape": list(d.shape)}
        atomic_write_bytes(sidecar, json.dumps(record, indent=2).encode())
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
