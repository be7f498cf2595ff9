"""Tests of trainables/data.py: splits, seeded streams, batched augmentation, datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision.transforms import functional as TF

from trainables.data import (
    DATASET_REGISTRY,
    DATASETS,
    DIGITS_PRESET,
    FIXED_TEST_FRACTION,
    BatchLoader,
    DataPreset,
    ImageSet,
    _generator,
    _load_digits,
    augment_batch,
    channel_stats,
    load_data,
    resolve_dataset,
    sample_augmentation,
    stream_seed,
    tuning_split,
)

REPO = Path(__file__).resolve().parents[1]
CIFAR_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg"
IDENTITY = DataPreset(mean=(0.0,), std=(1.0,), crop_padding=0, flip=False)


def _labels(counts: list[int]) -> torch.Tensor:
    """Shuffled labels with the given per-class counts."""
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]


def _coded_images(n: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """uint8 images whose pixel (i, j) holds 16*i + j + 1 (0 is reserved for padding)."""
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return (16 * i + j + 1).to(torch.uint8).expand(n, 1, h, w).contiguous()


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_tuning_split_disjoint_covering_stratified(fraction: float) -> None:
    counts = [10, 7, 25, 1, 3, 5]
    y = _labels(counts)
    tr, va = tuning_split(y, fraction, seed=3)
    assert tr.dtype == va.dtype == torch.int64
    assert torch.equal(tr, torch.sort(tr).values) and torch.equal(va, torch.sort(va).values)
    # Disjoint and covering: together a permutation of all indices.
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(len(y)))
    for c, n_c in enumerate(counts):
        # Independent rounding: decimal round-half-up, clamped to keep one train example.
        expect = int((Decimal(str(fraction)) * n_c).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        expect = min(expect, n_c - 1)
        assert int((y[va] == c).sum()) == expect, (c, n_c)
        assert int((y[tr] == c).sum()) == n_c - expect


def test_tuning_split_seeded() -> None:
    y = _labels([30, 30, 30])
    a = tuning_split(y, 0.2, seed=1)
    b = tuning_split(y, 0.2, seed=1)
    c = tuning_split(y, 0.2, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_tuning_split_edges() -> None:
    y = _labels([4, 4])
    tr, va = tuning_split(y, 0.0, seed=0)
    assert va.numel() == 0 and torch.equal(tr, torch.arange(8))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            tuning_split(y, bad, seed=0)


def test_stream_seed_independent_of_python_hash_salt() -> None:
    code = (
        "from trainables.data import stream_seed; "
        "print(stream_seed(7, 'order', 3), stream_seed(7, 'augment', 3))"
    )
    # Python's str hash is salted per process; a child with another salt must agree.
    outs = set()
    for salt in ("12345",):
        env = dict(os.environ, PYTHONHASHSEED=salt)
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        outs.add(out.stdout.strip())
    assert outs == {f"{stream_seed(7, 'order', 3)} {stream_seed(7, 'augment', 3)}"}
    seeds = {stream_seed(s, k, e) for s in (0, 1) for k in ("order", "augment") for e in (1, 2)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


# --------------------------------------------------------------------------- augmentation


def _reference_augment(x: torch.Tensor, p: int, dy, dx, flips) -> torch.Tensor:
    """Per-image loop: pad, slice the window, flip — torchvision's RandomCrop + flip order."""
    h, w = x.shape[-2:]
    out = []
    for k in range(x.shape[0]):
        img = F.pad(x[k], (p, p, p, p))[:, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
        out.append(torch.flip(img, dims=(-1,)) if flips[k] else img)
    return torch.stack(out)


def test_augment_batch_matches_per_image_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 5, 7), dtype=torch.uint8, generator=g)
    for p in (0, 1, 3):
        dy, dx, flips = sample_augmentation(16, p, True, g)
        assert torch.equal(
            augment_batch(x, p, dy, dx, flips), _reference_augment(x, p, dy, dx, flips)
        )


def test_zero_padding_crop_is_identity() -> None:
    x = torch.randint(0, 256, (6, 2, 4, 4), dtype=torch.uint8)
    dy, dx, flips = sample_augmentation(6, 0, False, torch.Generator().manual_seed(1))
    assert torch.equal(dy, torch.zeros(6, dtype=torch.int64)) and not bool(flips.any())
    assert torch.equal(augment_batch(x, 0, dy, dx, flips), x)
    # Centre window of a padded image is the original too.
    c = torch.full((6,), 3)
    assert torch.equal(augment_batch(x, 3, c, c, torch.zeros(6, dtype=torch.bool)), x)


def test_loader_augmentation_statistics() -> None:
    """Recover each sample's crop offset and flip from coded pixels; check the laws."""
    n, p, h, w = 3000, 2, 8, 8
    data = ImageSet(_coded_images(n, h, w), torch.zeros(n, dtype=torch.int64), ("a",))
    preset = DataPreset(mean=(0.0,), std=(1.0,), crop_padding=p, flip=True)
    loader = BatchLoader(data, preset, 256, "cpu", train=True, seed=11)
    xs = torch.cat([x for x, _ in loader.epoch(1)])
    v = torch.round(xs[:, 0] * 255).to(torch.int64)  # [n, h, w]
    # Output pixel (h-1-?, ...) — use the centre pixel (r, c), never padding for p < h/2.
    r, c = h // 2, w // 2
    centre, right = v[:, r, c], v[:, r, c + 1]
    assert bool((centre > 0).all()) and bool((right > 0).all())
    i, j = (centre - 1) // 16, (centre - 1) % 16
    flipped = right < centre  # columns read right-to-left
    dy = i + p - r
    dx = torch.where(flipped, j + p - (w - 1 - c), j + p - c)
    # Flip rate within a 4-sigma binomial band.
    rate = flipped.double().mean().item()
    assert abs(rate - 0.5) < 4 * (0.25 / n) ** 0.5
    # Offsets uniform over the 2p+1 positions (chi-square, false alarm 1e-4).
    for d in (dy, dx):
        assert int(d.min()) == 0 and int(d.max()) == 2 * p
        counts = torch.bincount(d, minlength=2 * p + 1).numpy()
        chi2 = ((counts - n / (2 * p + 1)) ** 2 / (n / (2 * p + 1))).sum()
        assert chi2 < stats.chi2.ppf(1 - 1e-4, df=2 * p)


def test_unaugmented_loader_returns_normalised_originals() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(10)
    preset = DataPreset((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_padding=4, flip=True)
    loader = BatchLoader(ImageSet(x, y, tuple("abcdefghij")), preset, 4, "cpu", train=False, seed=0)
    assert len(loader) == 3
    batches = list(loader.epoch(5))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches])
    expect = TF.normalize(x.float() / 255.0, list(preset.mean), list(preset.std))
    assert xs.dtype == torch.float32
    torch.testing.assert_close(xs, expect, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    # Train mode with a no-op preset: same images, only shuffled.
    noop = DataPreset((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_padding=0, flip=False)
    tl = BatchLoader(ImageSet(x, y, tuple("abcdefghij")), noop, 3, "cpu", train=True, seed=0)
    assert len(tl) == 4
    order = tl.order(1)
    assert not torch.equal(order, torch.arange(10))
    torch.testing.assert_close(
        torch.cat([b[0] for b in tl.epoch(1)]), expect[order], rtol=0, atol=1e-6
    )
    dl = BatchLoader(
        ImageSet(x, y, tuple("abcdefghij")), noop, 3, "cpu", train=True, seed=0, drop_last=True
    )
    assert len(dl) == 3 and sum(len(b[1]) for b in dl.epoch(1)) == 9


# --------------------------------------------------------------------------- reproducibility


def _toy(n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)
    return ImageSet(x, torch.arange(n) % 4, ("a", "b", "c", "d"))


AUG = DataPreset((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_padding=2, flip=True)


def _epoch(loader: BatchLoader, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader.epoch(e), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_same_seed_same_batches_and_resume() -> None:
    a = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=4)
    b = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=4)
    # a runs epochs 1..3; b (a "resumed" trial) jumps straight to 3.
    ea = [_epoch(a, e) for e in (1, 2, 3)]
    eb3 = _epoch(b, 3)
    assert torch.equal(ea[2][0], eb3[0]) and torch.equal(ea[2][1], eb3[1])
    assert not torch.equal(ea[0][0], ea[1][0])  # epochs differ
    c = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=5)
    assert not torch.equal(_epoch(c, 3)[1], eb3[1])  # another seed, another order


def test_order_stream_independent_of_augmentation_stream() -> None:
    base = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=4)
    other_aug = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=4, augment_seed=99)
    other_order = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=77, augment_seed=4)
    xb, yb = _epoch(base, 2)
    xa, ya = _epoch(other_aug, 2)
    assert torch.equal(base.order(2), other_aug.order(2)) and torch.equal(yb, ya)
    assert not torch.equal(xb, xa)
    assert not torch.equal(base.order(2), other_order.order(2))
    # Reconstruct every loader's batches from its order and the documented augment
    # stream: the j-th batch's draws depend on (augment_seed, epoch, j) only.
    data = _toy()
    for loader in (base, other_aug, other_order):
        g = _generator(loader.augment_seed, "augment", 2)
        parts = []
        for idx in loader.order(2).split(8):
            dy, dx, fl = sample_augmentation(len(idx), 2, True, g)
            crop = augment_batch(data.images[idx], 2, dy, dx, fl).float() / 255.0
            parts.append(TF.normalize(crop, list(AUG.mean), list(AUG.std)))
        torch.testing.assert_close(_epoch(loader, 2)[0], torch.cat(parts), rtol=0, atol=1e-6)
    # Same augment seed: the first batches share the crop/flip draws, not the images.
    ga = _generator(4, "augment", 2)
    gb = _generator(other_order.augment_seed, "augment", 2)
    assert all(
        torch.equal(u, v)
        for u, v in zip(
            sample_augmentation(8, 2, True, ga), sample_augmentation(8, 2, True, gb), strict=True
        )
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches() -> None:
    cpu = BatchLoader(_toy(), AUG, 8, "cpu", train=True, seed=4)
    gpu = BatchLoader(_toy(), AUG, 8, "cuda", train=True, seed=4)
    xc, yc = _epoch(cpu, 1)
    xg, yg = _epoch(gpu, 1)
    torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
    assert torch.equal(yg.cpu(), yc)


# --------------------------------------------------------------------------- datasets


def test_digits_offline_shapes_and_modes() -> None:
    tune = load_data("digits", val_fraction=0.1, split_seed=0)
    final = load_data("digits", final=True)
    assert "digits" in DATASETS
    assert (tune.num_classes, tune.in_channels, tune.image_size) == (10, 1, 8)
    assert tune.train.classes == tuple(str(i) for i in range(10))
    assert tune.eval_split == "val" and final.eval_split == "test"
    assert tune.train.images.dtype == torch.uint8 and tune.train.images.shape[1:] == (1, 8, 8)
    assert int(tune.train.images.max()) == 255 and int(tune.train.images.min()) == 0
    # Fixed 20 % test split (rounded per class), the rest is train.
    n_test = sum(
        int((Decimal(str(FIXED_TEST_FRACTION)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        for n in np.bincount(final.train.labels.numpy()) + np.bincount(final.eval.labels.numpy())
    )
    assert len(final.eval) == n_test and len(final.train) + len(final.eval) == 1797
    assert len(tune.train) + len(tune.eval) == len(final.train)
    # The test split does not move with split_seed; the tuning split does.
    other = load_data("digits", final=True, split_seed=9)
    assert torch.equal(other.eval.images, final.eval.images)
    tune2 = load_data("digits", split_seed=1)
    assert tune.fingerprint() == load_data("digits", split_seed=0).fingerprint()
    assert len({tune.fingerprint(), tune2.fingerprint(), final.fingerprint()}) == 3


def test_digits_values_and_preset_stats() -> None:
    from sklearn.datasets import load_digits

    train, test = _load_digits()
    raw = load_digits()
    # Every digits image appears exactly once, scaled x255/16 and rounded.
    scaled = np.rint(raw.images * 255.0 / 16.0)
    got = np.concatenate([train.images[:, 0].numpy(), test.images[:, 0].numpy()])
    key = lambda a: sorted(map(bytes, a.astype(np.uint8).reshape(len(a), -1)))  # noqa: E731
    assert key(got) == key(scaled)
    # The preset constants are the digits train-part pixel stats (numpy, independent).
    px = train.images.numpy().astype(np.float64) / 255.0
    assert DIGITS_PRESET.mean[0] == pytest.approx(px.mean(), abs=5e-5)
    assert DIGITS_PRESET.std[0] == pytest.approx(px.std(), abs=5e-5)
    assert channel_stats(train.images) == (DIGITS_PRESET.mean, DIGITS_PRESET.std)
    assert (DIGITS_PRESET.crop_padding, DIGITS_PRESET.flip) == (1, False)


def test_unknown_name_and_missing_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'mnist'.*digits, cifar10, cifar100"):
        load_data("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_data("imagefolder:")
    for name in ("cifar10", "cifar100"):
        with pytest.raises(FileNotFoundError, match=r"download: true") as info:
            load_data(name, root=str(tmp_path))
        assert str(tmp_path) in str(info.value)


def test_dataset_registry_entries_and_lookup() -> None:
    """One registry (issue 9): DATASETS derives from it, names resolve through it, and
    each fixed entry's metadata matches what its loader gives (digits checked offline)."""
    assert DATASETS == ("digits", "cifar10", "cifar100")
    assert set(DATASET_REGISTRY) == {*DATASETS, "imagefolder"}
    for key, spec in DATASET_REGISTRY.items():
        assert spec.name == key
        assert spec.parameterised == (key == "imagefolder")
        fixed = (spec.num_classes, spec.image_size, spec.in_channels, spec.preset)
        assert all(v is None for v in fixed) if spec.parameterised else None not in fixed
    assert [k for k, s in DATASET_REGISTRY.items() if s.embedded] == ["digits"]
    assert DATASET_REGISTRY["cifar100"].num_classes == 100
    assert resolve_dataset("digits") == (DATASET_REGISTRY["digits"], None)
    assert resolve_dataset("imagefolder:/a:b") == (DATASET_REGISTRY["imagefolder"], "/a:b")
    for bad in ("mnist", "imagefolder", "imagefolder:", "digits:x", "DIGITS"):
        with pytest.raises(ValueError) as info:
            resolve_dataset(bad)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"unknown dataset {bad!r}; allowed:")
        assert msg.endswith("digits, cifar10, cifar100 or 'imagefolder:<path>'")
    spec = DATASET_REGISTRY["digits"]
    b = load_data("digits")
    assert (b.num_classes, b.image_size, b.in_channels) == (
        spec.num_classes,
        spec.image_size,
        spec.in_channels,
    )
    assert b.preset is spec.preset is DIGITS_PRESET


def _write_tree(root: Path, classes: dict[str, int], size=(8, 6), mode: str = "L") -> None:
    g = np.random.default_rng(0)
    for cname, n in classes.items():
        (root / cname).mkdir(parents=True)
        for k in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / cname / f"{k:03d}.png"
            )


def test_imagefolder_without_test_dir_carves_fixed_split(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", {"b": 10, "a": 5})
    b = load_data(f"imagefolder:{tmp_path / 'tree'}", final=True)
    assert b.train.classes == ("a", "b") and b.in_channels == 1
    assert b.train.images.shape[1:] == (1, 6, 8)  # H=6, W=8
    assert len(b.eval) == 3 and len(b.train) == 12  # round(0.2*5)=1, round(0.2*10)=2
    assert (b.preset.crop_padding, b.preset.flip) == (0, False)  # not 32x32
    # PNGs are lossless: the first train image of class "a" is one of a's files.
    files = {np.asarray(Image.open(p)).tobytes() for p in (tmp_path / "tree" / "a").iterdir()}
    assert b.train.images[b.train.labels == 0][0, 0].numpy().tobytes() in files
    px = b.train.images.numpy().astype(np.float64) / 255.0
    assert b.preset.mean[0] == pytest.approx(px.mean(), abs=5e-5)
    assert b.preset.std[0] == pytest.approx(px.std(), abs=5e-5)


def test_imagefolder_size_mismatch_names_file(tmp_path: Path) -> None:
    _write_tree(tmp_path / "t", {"a": 3})
    bad = tmp_path / "t" / "a" / "zzz.png"
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(bad)
    with pytest.raises(ValueError, match=r"zzz\.png is 5x5 .* 8x6"):
        load_data(f"imagefolder:{tmp_path / 't'}")


def test_imagefolder_real_cifar_jpegs(tmp_path: Path) -> None:
    if not (CIFAR_JPEG / "train").is_dir():
        pytest.skip(f"shared CIFAR-10 JPEGs not found at {CIFAR_JPEG}")
    from torchvision.datasets.folder import find_classes, pil_loader

    name = f"imagefolder:{CIFAR_JPEG}"
    cache = tmp_path / "cache"
    b = load_data(name, max_per_class=3, val_fraction=1 / 3, cache_dir=str(cache))
    classes, _ = find_classes(str(CIFAR_JPEG / "train"))
    assert b.train.classes == tuple(classes)
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 3, 32)
    assert (len(b.train), len(b.eval), b.eval_split) == (20, 10, "val")
    assert (b.preset.crop_padding, b.preset.flip) == (4, True)
    # Decoding agrees with torchvision's loader on the same (first) file of each class.
    final = load_data(name, max_per_class=3, final=True, cache_dir=str(cache))
    assert (len(final.train), len(final.eval)) == (30, 30)
    for label, cname in enumerate(classes):
        path = min((CIFAR_JPEG / "train" / cname).glob("*.jpg"))
        expect = torch.from_numpy(np.array(pil_loader(str(path)))).permute(2, 0, 1)
        assert torch.equal(final.train.images[final.train.labels == label][0], expect)
    # A second load is served from the cache and gives the same tensors ...
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 2
    again = load_data(name, max_per_class=3, final=True, cache_dir=str(cache))
    assert torch.equal(again.train.images, final.train.images)
    # ... and really reads it: blanked cache files come back blank.
    for f in files:
        with np.load(f) as z:
            np.savez(f, images=np.zeros_like(z["images"]), labels=z["labels"])
    blank = load_data(name, max_per_class=3, final=True, cache_dir=str(cache))
    assert int(blank.train.images.max()) == 0
    assert again.fingerprint() == final.fingerprint() != b.fingerprint()
    x, y = next(
        iter(BatchLoader(final.train, final.preset, 16, "cpu", train=True, seed=0).epoch(1))
    )
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
