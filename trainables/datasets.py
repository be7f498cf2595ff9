"""The dataset registry: name -> :class:`DatasetSpec`, plus the loaders behind it.

Like ``MODELS`` (``trainables/models``) and ``LOSSES`` (``trainables/losses``), one
explicit dict, :data:`DATASET_REGISTRY`, says which datasets exist; each entry states
its class count, input size and channels, whether it is embedded (ships with an
installed package: offline, no files), its normalisation/augmentation preset and its
loader. ``imagefolder`` is a parameterised entry, used as ``"imagefolder:<path>"``;
its class count, size and preset are read from the tree. :func:`resolve_dataset` turns
a config name into ``(spec, argument)`` and refuses an unknown name in one line listing
the allowed ones. ``trainables.data.load_data`` is the only caller that trains on it.

Also here, because the loaders need them: the in-memory :class:`ImageSet`, the seeded
random streams (:func:`stream_seed`) and the stratified :func:`tuning_split` that also
carves the fixed test split of datasets shipped without one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LoadOptions:
    """What ``load_data`` passes to every loader (each uses what applies to it)."""

    root: str | None = None
    download: bool = False
    max_per_class: int | None = None
    cache_dir: str | None = None


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A loader's result: the train and test parts, the preset, the canonical name
    (``imagefolder:`` + the resolved path) and whether ``max_per_class`` was already
    applied (imagefolder caps at listing time, so only k files per class are decoded)."""

    name: str
    train: ImageSet
    test: ImageSet
    preset: DataPreset
    capped: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry.

    ``num_classes``, ``image_size`` (side length), ``in_channels`` and ``preset`` are
    ``None`` when they depend on the data (imagefolder: read from the tree, preset
    from its train part). ``embedded``: ships with an installed package, needs no
    files and no download (the offline quickstart data). ``parameterised``: used as
    ``"<name>:<argument>"`` (imagefolder: the folder). ``loader(argument, options)``.
    """

    name: str
    description: str
    loader: Callable[[str | None, LoadOptions], LoadedDataset]
    num_classes: int | None
    image_size: int | None
    in_channels: int | None
    embedded: bool
    preset: DataPreset | None
    parameterised: bool = False

    @property
    def usage(self) -> str:
        """How a config names it: ``digits`` or ``imagefolder:<path>``."""
        return f"{self.name}:<path>" if self.parameterised else self.name

    def load(self, argument: str | None, options: LoadOptions) -> LoadedDataset:
        return self.loader(argument, options)


def _digits_entry(_: str | None, options: LoadOptions) -> LoadedDataset:
    train, test = _load_digits()
    return LoadedDataset("digits", train, test, DIGITS_PRESET)


def _cifar_entry(
    name: str, preset: DataPreset
) -> Callable[[str | None, LoadOptions], LoadedDataset]:
    def load(_: str | None, options: LoadOptions) -> LoadedDataset:
        root = options.root
        root = root if root is not None else str(Path.home() / ".cache" / "kdstudy" / "data")
        train, test = _load_cifar(name, root, options.download)
        return LoadedDataset(name, train, test, preset)

    return load


def _imagefolder_entry(argument: str | None, options: LoadOptions) -> LoadedDataset:
    assert argument
    path = str(Path(argument).expanduser().resolve())
    train, test = _load_imagefolder(path, options.max_per_class, options.cache_dir)
    mean, std = channel_stats(train.images)
    # A constant channel has std 0; dividing by 1 then only centres it.
    std = tuple(s if s > 0 else 1.0 for s in std)
    square32 = tuple(train.images.shape[2:]) == (32, 32)
    preset = DataPreset(mean, std, crop_padding=4 if square32 else 0, flip=square32)
    return LoadedDataset(IMAGEFOLDER_PREFIX + path, train, test, preset, capped=True)


#: registry key = the ``data.dataset`` name of a trial config (``<key>:<arg>`` when
#: parameterised). Presets: CIFAR-100 methods.md §9; CIFAR-10 the usual training-set
#: statistics; digits :data:`DIGITS_PRESET`; imagefolder stats computed from its train
#: part, crop pad 4 + flip for 32x32 images and no augmentation otherwise.
DATASET_REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        description="scikit-learn's embedded 8x8 digits, fixed 20 % test split",
        loader=_digits_entry,
        num_classes=10,
        image_size=8,
        in_channels=1,
        embedded=True,
        preset=DIGITS_PRESET,
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        description="CIFAR-10 (torchvision files under root; download: true fetches them)",
        loader=_cifar_entry("cifar10", CIFAR10_PRESET),
        num_classes=10,
        image_size=32,
        in_channels=3,
        embedded=False,
        preset=CIFAR10_PRESET,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        description="CIFAR-100 (torchvision files under root; download: true fetches them)",
        loader=_cifar_entry("cifar100", CIFAR100_PRESET),
        num_classes=100,
        image_size=32,
        in_channels=3,
        embedded=False,
        preset=CIFAR100_PRESET,
    ),
    "imagefolder": DatasetSpec(
        name="imagefolder",
        description="a class-per-folder image tree (train/ + test/, else a fixed 20 % test)",
        loader=_imagefolder_entry,
        num_classes=None,
        image_size=None,
        in_channels=None,
        embedded=False,
        preset=None,
        parameterised=True,
    ),
}

#: Built-in (non-parameterised) dataset names; ``"imagefolder:<path>"`` is accepted too.
DATASETS: tuple[str, ...] = tuple(k for k, s in DATASET_REGISTRY.items() if not s.parameterised)


def allowed_datasets() -> str:
    """``"digits, cifar10, cifar100 or 'imagefolder:<path>'"``: for error messages."""
    plain = [s.usage for s in DATASET_REGISTRY.values() if not s.parameterised]
    param = [f"'{s.usage}'" for s in DATASET_REGISTRY.values() if s.parameterised]
    return ", ".join(plain) + (" or " + ", ".join(param) if param else "")


def resolve_dataset(name: str) -> tuple[DatasetSpec, str | None]:
    """``(spec, argument)`` of a dataset name: ``"digits"`` -> (digits, None),
    ``"imagefolder:/data/x"`` -> (imagefolder, "/data/x").

    Raises:
        ValueError: (one line) an unknown name, a parameterised entry without its
            argument (``"imagefolder:"``), or an argument given to a plain entry.
    """
    key, sep, argument = name.partition(":")
    spec = DATASET_REGISTRY.get(key)
    if spec is not None and spec.parameterised == bool(sep) and (argument or not sep):
        return spec, (argument if sep else None)
    raise ValueError(f"unknown dataset {name!r}; allowed: {allowed_datasets()}")
