"""Datasets, the tuning split and batched on-device augmentation.

The whole dataset is held as one ``uint8 [N, C, H, W]`` tensor and moved to the
training device once; a :class:`BatchLoader` then gathers each batch by index and
applies random crop (zero padding) + horizontal flip + normalisation to the whole
batch on that device, with no Python loop over images. This replaces the
per-image PIL transforms of a ``torchvision`` ``DataLoader`` (see
``benchmarks/bench_data.py`` for the speed-up).

Two modes (torchdistill's separation, ARCHITECTURE.md): *tuning* trains on the
train part minus a seeded stratified validation split and evaluates on that
split (``eval_split="val"``); *final* trains on the full train part and
evaluates on the test set (``eval_split="test"``). methods.md §9: "tune on the
validation split only".

Reproducibility: the data order and the augmentation draw from two separate
random streams, each a ``torch.Generator`` seeded from ``(seed, stream, epoch)``
through SHA-256 (:func:`stream_seed`), so epoch ``k``'s batches depend only on
``(seed, k)``: two trials with the same seed see the same batches whatever their
losses, and a resumed trial sees the same epoch ``k + 1`` as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100")
"""Built-in dataset names; ``"imagefolder:<path>"`` is accepted as well."""

IMAGEFOLDER_PREFIX = "imagefolder:"

# Seed of the fixed 20 % test split carved from datasets that ship without a test
# set (digits, an imagefolder tree without train/ and test/). It is a constant,
# not the trial's split seed, so the test set never changes between studies.
FIXED_TEST_SEED = 20_240_601
FIXED_TEST_FRACTION = 0.2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Bumped whenever the decoded-cache layout or decoding rules change, so stale
# caches are never read.
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class DataPreset:
    """Normalisation + augmentation recipe of a dataset.

    ``mean``/``std`` are per channel on the ``[0, 1]`` scale; ``crop_padding`` is
    the zero padding before a random crop of the original size (0 = no crop);
    ``flip`` enables a random horizontal flip with probability 1/2.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std differ in length: {self.mean} vs {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


# methods.md §9 (the common CIFAR-100 recipe): crop 32 pad 4 + flip and these stats.
CIFAR100_PRESET = DataPreset(
    mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), crop_padding=4, flip=True
)
# The usual CIFAR-10 training-set statistics (population std), same augmentation.
CIFAR10_PRESET = DataPreset(
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_padding=4, flip=True
)
# Pixel mean/std of the digits train part (the 80 % left after the fixed test
# split, values scaled to [0, 1], population std); tests/test_data.py recomputes
# them. Padding 1 on 8x8 images is the same 1/8 of the side as pad 4 on 32x32;
# no flip because digits are not mirror-symmetric.
DIGITS_PRESET = DataPreset(mean=(0.3054,), std=(0.3761,), crop_padding=1, flip=False)


# eq=False: field-wise == on tensors is ambiguous; identity is the useful equality.
@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images and labels held in memory: ``images`` uint8 ``[N, C, H, W]`` on CPU,
    ``labels`` int64 ``[N]``, ``classes`` the class names indexed by label."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> ImageSet:
        """The images at ``indices`` (same class list)."""
        return ImageSet(self.images[indices], self.labels[indices], self.classes)


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Everything a trial needs from the data side.

    ``train`` is what the model trains on; ``eval`` is the validation split in
    tuning mode and the test set in final mode, and ``eval_split`` ("val" or
    "test") is the metric prefix. ``name`` and ``split_digest`` (a hash of the
    split indices) feed :meth:`fingerprint`; they default to empty for bundles
    built by hand (then the labels are hashed instead).
    """

    train: ImageSet
    eval: ImageSet
    eval_split: str
    preset: DataPreset
    num_classes: int
    in_channels: int
    image_size: int
    split_seed: int
    val_fraction: float
    name: str = ""
    split_digest: str = ""

    def fingerprint(self) -> str:
        """Short (16 hex digits) hash of dataset name + split indices, for provenance:
        equal fingerprints mean the same images in the same train/eval roles."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.eval_split}|{len(self.train)}|{len(self.eval)}|".encode())
        if self.split_digest:
            h.update(self.split_digest.encode())
        else:
            h.update(self.train.labels.numpy().tobytes())
            h.update(self.eval.labels.numpy().tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- seeds


def stream_seed(seed: int, stream: str, epoch: int) -> int:
    """A 63-bit generator seed for random stream ``stream`` of ``epoch`` under ``seed``.

    SHA-256 instead of Python's ``hash()`` because the latter is salted per
    process (PYTHONHASHSEED), and Ray runs trials in different processes.
    """
    digest = hashlib.sha256(f"{int(seed)}|{stream}|{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, stream: str, epoch: int) -> torch.Generator:
    # Always a CPU generator: random numbers are drawn on CPU and moved to the data's
    # device, so a run gives the same batches on CPU and on CUDA (a CUDA generator
    # produces a different sequence from the same seed).
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, stream, epoch))


# --------------------------------------------------------------------------- splits


def tuning_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded stratified split of ``range(len(labels))`` into ``(train_idx, val_idx)``.

    Per class ``c`` with ``n_c`` examples, ``round_half_up(val_fraction * n_c)``
    go to validation, clamped to ``n_c - 1`` so every class keeps at least one
    training example (and a class of one example stays in train). Which examples
    go is a seeded permutation per class (classes visited in increasing label
    order, one generator), so the same ``(labels, val_fraction, seed)`` always
    gives the same split. Both index tensors are int64, sorted, disjoint and
    together cover every index. ``val_fraction`` must lie in ``[0, 1)``; 0 gives
    an empty validation split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    gen = _generator(seed, "split", 0)
    train_parts: list[Tensor] = []
    val_parts: list[Tensor] = []
    for c in torch.unique(labels).tolist():  # sorted
        idx = torch.nonzero(labels == c).reshape(-1)
        n_c = int(idx.numel())
        # Round half up (floor(x + 0.5)) rather than Python's banker's rounding.
        n_val = min(int(np.floor(val_fraction * n_c + 0.5)), n_c - 1)
        perm = idx[torch.randperm(n_c, generator=gen)]
        val_parts.append(perm[:n_val])
        train_parts.append(perm[n_val:])
    empty = torch.empty(0, dtype=torch.int64)
    train_idx = torch.sort(torch.cat(train_parts) if train_parts else empty).values
    val_idx = torch.sort(torch.cat(val_parts) if val_parts else empty).values
    return train_idx, val_idx


def _cap_per_class(labels: Tensor, k: int | None) -> Tensor:
    """Indices of the first ``k`` examples of each class, in original order."""
    n = int(labels.numel())
    if k is None:
        return torch.arange(n)
    if k < 1:
        raise ValueError(f"max_per_class must be >= 1, got {k}")
    keep = torch.zeros(n, dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        keep[torch.nonzero(labels == c).reshape(-1)[:k]] = True
    return torch.nonzero(keep).reshape(-1)


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.to(torch.int64).contiguous().numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel pixel mean and population std of uint8 ``images`` on the [0, 1] scale.

    Accumulated in float64 over chunks so 50k CIFAR images never need a float copy.
    Returns ``(mean, std)`` rounded to 4 decimals (as the published presets are).
    """
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / count
    std = torch.sqrt(torch.clamp(s2 / count - mean * mean, min=0.0))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# --------------------------------------------------------------------------- loaders


def _load_digits() -> tuple[ImageSet, ImageSet]:
    """scikit-learn's embedded 8x8 digits, with the fixed stratified 20 % test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # Values are integers 0..16; scale to the uint8 range like any other image.
    images = np.rint(d.images.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    full = ImageSet(x, y, tuple(str(i) for i in range(10)))
    train_idx, test_idx = tuning_split(y, FIXED_TEST_FRACTION, FIXED_TEST_SEED)
    return full.subset(train_idx), full.subset(test_idx)


def _load_cifar(name: str, root: str, download: bool) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10/100 via torchvision, reading ``.data`` (NHWC uint8) directly."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    sets = []
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=download)
        except RuntimeError as exc:
            folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
            raise FileNotFoundError(
                f"{name}: dataset files not found (or corrupted) under root {root!r}. "
                f"Set `download: true` to fetch them, or put the standard python-version "
                f"files ({folder}/) under that root."
            ) from exc
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        sets.append(ImageSet(x, y, tuple(ds.classes)))
    return sets[0], sets[1]


def _list_images(folder: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image file, in torchvision ``ImageFolder`` order
    (sorted ``os.walk`` of each class folder, sorted names). Plain strings, not
    ``Path`` objects: building 60k ``Path``s costs seconds."""
    files: list[tuple[str, int]] = []
    for label, cname in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(folder, cname), followlinks=True)):
            files.extend(
                (os.path.join(dirpath, f), label)
                for f in sorted(names)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
    return files


def _decode(files: Sequence[str]) -> Tensor:
    """Decode image files into one uint8 ``[N, C, H, W]`` tensor (all sizes must match)."""
    from PIL import Image

    if not files:
        raise ValueError("imagefolder: no image files found")
    with Image.open(files[0]) as im:
        # Grayscale trees stay one channel; everything else becomes RGB.
        mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        size = im.size

    def one(path: str) -> np.ndarray:
        with Image.open(path) as im:
            if im.size != size:
                raise ValueError(
                    f"imagefolder: all images must share one size; {path} is "
                    f"{im.size[0]}x{im.size[1]} but {files[0]} is {size[0]}x{size[1]} (W x H)"
                )
            return np.asarray(im.convert(mode), dtype=np.uint8)

    # PIL releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(one, files, chunksize=256))
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous()


def _imagefolder_part(
    folder: Path, classes: tuple[str, ...], max_per_class: int | None, cache_dir: str | None
) -> ImageSet:
    files = _list_images(folder, classes)
    labels = torch.tensor([lab for _, lab in files], dtype=torch.int64)
    keep = _cap_per_class(labels, max_per_class).tolist()
    files = [files[i] for i in keep]
    labels = labels[keep] if keep else labels[:0]
    paths = [p for p, _ in files]
    cache: Path | None = None
    if cache_dir is not None:
        h = hashlib.sha256(f"{_CACHE_VERSION}|{folder.resolve()}|{max_per_class}|".encode())
        for p, lab in files:
            st = os.stat(p)
            rel = os.path.relpath(p, folder)
            h.update(f"{rel}|{lab}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        cache = Path(cache_dir) / f"imagefolder-{h.hexdigest()[:24]}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return ImageSet(
                    torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), classes
                )
    images = _decode(paths)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: parallel trials may fill the same cache at once.
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, cache)
    return ImageSet(images, labels, classes)


def _load_imagefolder(
    path: str, max_per_class: int | None, cache_dir: str | None
) -> tuple[ImageSet, ImageSet]:
    """A class-per-folder tree; ``train/`` + ``test/`` when present, else a fixed 20 % test."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: {str(root)!r} is not a directory")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    train_dir = root / "train" if has_split else root
    classes = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir()))
    if not classes:
        raise ValueError(f"imagefolder: no class folders under {str(train_dir)!r}")
    if not has_split:
        full = _imagefolder_part(root, classes, max_per_class, cache_dir)
        train_idx, test_idx = tuning_split(full.labels, FIXED_TEST_FRACTION, FIXED_TEST_SEED)
        return full.subset(train_idx), full.subset(test_idx)
    test_classes = tuple(sorted(e.name for e in os.scandir(root / "test") if e.is_dir()))
    if test_classes != classes:
        raise ValueError(
            f"imagefolder: train/ and test/ class folders differ: {classes} vs {test_classes}"
        )
    train = _imagefolder_part(root / "train", classes, max_per_class, cache_dir)
    test = _imagefolder_part(root / "test", classes, max_per_class, cache_dir)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"imagefolder: train images are {tuple(train.images.shape[1:])} but test images "
            f"are {tuple(test.images.shape[1:])}"
        )
    return train, test


def load_data(
    name: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    final: bool = False,
    download: bool = False,
    max_per_class: int | None = None,
    cache_dir: str | None = None,
) -> DataBundle:
    """Load a dataset as a :class:`DataBundle` in tuning or final mode.

    ``name``: one of :data:`DATASETS` or ``"imagefolder:<path>"``.
    ``root``: CIFAR download/storage folder (default ``~/.cache/kdstudy/data``).
    ``val_fraction`` (default 0.1, a common held-out size) and ``split_seed``: the
    stratified tuning split (:func:`tuning_split`) of the train part; ignored when
    ``final`` (train on the full train part, evaluate on the test set; methods.md
    §9 reports test accuracy only for final runs). ``max_per_class`` keeps the
    first k examples of each class of each part (tests, benchmarks);
    ``cache_dir`` caches decoded imagefolder images.

    Presets: CIFAR-100 methods.md §9; CIFAR-10 the usual training-set statistics;
    digits :data:`DIGITS_PRESET`; imagefolder stats computed from its train part,
    crop pad 4 + flip for 32x32 images and no augmentation otherwise.
    """
    cap_in_digest = max_per_class
    if name == "digits":
        train_part, test_part = _load_digits()
        preset = DIGITS_PRESET
    elif name in ("cifar10", "cifar100"):
        root = root if root is not None else str(Path.home() / ".cache" / "kdstudy" / "data")
        train_part, test_part = _load_cifar(name, root, download)
        preset = CIFAR10_PRESET if name == "cifar10" else CIFAR100_PRESET
    elif name.startswith(IMAGEFOLDER_PREFIX) and len(name) > len(IMAGEFOLDER_PREFIX):
        path = str(Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser().resolve())
        name = IMAGEFOLDER_PREFIX + path
        train_part, test_part = _load_imagefolder(path, max_per_class, cache_dir)
        # The cap is already applied at file-listing time (so only k files per
        # class are decoded); don't apply it twice.
        max_per_class = None
        mean, std = channel_stats(train_part.images)
        # A constant channel has std 0; dividing by 1 then only centres it.
        std = tuple(s if s > 0 else 1.0 for s in std)
        square32 = tuple(train_part.images.shape[2:]) == (32, 32)
        preset = DataPreset(mean, std, crop_padding=4 if square32 else 0, flip=square32)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)} or 'imagefolder:<path>'"
        )

    train_cap = _cap_per_class(train_part.labels, max_per_class)
    test_cap = _cap_per_class(test_part.labels, max_per_class)
    train_part, test_part = train_part.subset(train_cap), test_part.subset(test_cap)
    if final:
        train, evalset, eval_split = train_part, test_part, "test"
        digest = _digest(train_cap, test_cap)
    else:
        tr_idx, val_idx = tuning_split(train_part.labels, val_fraction, split_seed)
        train, evalset, eval_split = train_part.subset(tr_idx), train_part.subset(val_idx), "val"
        digest = _digest(train_cap, tr_idx, val_idx)
    if cap_in_digest is not None:
        digest = hashlib.sha256(f"{digest}|cap={cap_in_digest}".encode()).hexdigest()
    _, c, h, w = train.images.shape
    return DataBundle(
        train=train,
        eval=evalset,
        eval_split=eval_split,
        preset=preset,
        num_classes=len(train.classes),
        in_channels=int(c),
        # Models take one side length; for non-square imagefolder images the larger.
        image_size=int(max(h, w)),
        split_seed=split_seed,
        val_fraction=val_fraction,
        name=name,
        split_digest=digest,
    )


# --------------------------------------------------------------------------- augmentation


def sample_augmentation(
    n: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw per-sample crop offsets and flips for a batch of ``n`` (on CPU).

    Returns ``(dy, dx, flips)``: offsets uniform over ``0..2*padding`` (the
    ``2p+1`` crop positions in the padded image, as torchvision's
    ``RandomCrop(size, padding)``), flips Bernoulli(1/2) (``RandomHorizontalFlip``).
    The three draws always happen, so the stream advances the same way whatever
    the preset.
    """
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros_like(flips)
    return dy, dx, flips


def augment_batch(x: Tensor, padding: int, dy: Tensor, dx: Tensor, flips: Tensor) -> Tensor:
    """Random-crop-with-zero-padding + horizontal flip of a whole batch, vectorised.

    ``x``: ``[B, C, H, W]`` (any dtype, any device); ``dy``/``dx``: crop offsets in
    the padded image; ``flips``: bool. Pads once, then gathers every crop with one
    ``torch.gather`` over the flattened padded planes (the per-sample flat index is
    shared by all channels through a stride-0 ``expand``). The flip is folded into
    the column index (a flipped crop reads columns ``dx + W-1-j``), so it costs
    nothing extra. Same result as torchvision's ``RandomCrop(padding)`` followed by
    ``RandomHorizontalFlip`` with these draws. (Measured on CPU: ~4x faster than
    4-D advanced indexing and ~1.5x faster than ``unfold`` windows.)
    """
    b, c, h, w = x.shape
    dev = x.device
    dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev)
    xp = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    wp = w + 2 * padding
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy[:, None] + ar_h  # [B, H]
    cols = dx[:, None] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(xp.reshape(b, c, -1), 2, flat).reshape(b, c, h, w)


def normalize_batch(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x / 255 - mean) / std`` as float32 — what ``ToTensor`` + ``Normalize`` compute."""
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)


class BatchLoader:
    """Batches of a fully in-memory :class:`ImageSet`, augmented on the device.

    ``train=True``: each epoch a seeded shuffle (stream ``"order"``) and a seeded
    crop/flip per sample (stream ``"augment"``); ``train=False``: fixed order, no
    augmentation. Both streams are seeded by :func:`stream_seed` from
    ``(seed, stream, epoch)``; ``augment_seed`` (default ``seed``) lets the
    augmentation stream be changed alone. Random numbers are always drawn with a
    CPU generator and moved to the device, so CPU and CUDA runs see the same
    batches. The images are moved to ``device`` once, in the constructor.
    """

    def __init__(
        self,
        data: ImageSet,
        preset: DataPreset,
        batch_size: int,
        device: torch.device | str,
        *,
        train: bool,
        seed: int,
        drop_last: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(preset.mean) != data.images.shape[1]:
            raise ValueError(
                f"preset has {len(preset.mean)} channels but images have {data.images.shape[1]}"
            )
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.preset = preset
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.augment_seed = seed if augment_seed is None else augment_seed
        self.drop_last = drop_last
        self._mean = torch.tensor(preset.mean, dtype=torch.float32, device=self.device)
        self._mean = self._mean.view(1, -1, 1, 1)
        self._std = torch.tensor(preset.std, dtype=torch.float32, device=self.device)
        self._std = self._std.view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = int(self.labels.shape[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def augments(self) -> bool:
        """Whether batches are augmented (train mode and a non-trivial preset)."""
        return self.train and (self.preset.crop_padding > 0 or self.preset.flip)

    def order(self, epoch: int) -> Tensor:
        """The sample order of ``epoch`` (CPU int64): seeded permutation or ``arange``."""
        n = int(self.labels.shape[0])
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator(self.seed, "order", epoch))

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches of ``epoch``: x float32 ``[b, C, H, W]`` normalised,
        y int64, both on the device. Depends only on ``(seed, augment_seed, epoch)``."""
        order = self.order(epoch).to(self.device)
        aug_gen = _generator(self.augment_seed, "augment", epoch) if self.augments else None
        pad = self.preset.crop_padding
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            # index_select, not self.images[idx]: the advanced-indexing kernel is
            # ~10x slower for this row gather on CPU.
            x = self.images.index_select(0, idx)
            if aug_gen is not None:
                dy, dx, flips = sample_augmentation(idx.numel(), pad, self.preset.flip, aug_gen)
                x = augment_batch(x, pad, dy, dx, flips)
            yield normalize_batch(x, self._mean, self._std), self.labels.index_select(0, idx)
