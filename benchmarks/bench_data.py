"""Images/s of the in-memory batched augmentation vs torchvision's per-image pipeline.

Both sides read the SAME uint8 images already decoded in memory (10 000 CIFAR-10
training JPEGs from ../shared/data/cifar10-jpeg, or synthetic 32x32 images when
that folder is absent) and produce normalised float batches of 64 with random
crop 32 pad 4 + horizontal flip (the methods.md §9 recipe), on CPU:

- fast: ``trainables.data.BatchLoader`` (whole-batch gather + crop/flip + normalise);
- baseline: ``DataLoader`` over a Dataset applying ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` per PIL image, at
  num_workers 0, 1, 2 (persistent workers, timed after a warm-up epoch so worker
  start-up is not counted); the best is the reference.

The machine may be shared, so the settings are timed in interleaved rounds and
each keeps its best epoch. The main process uses ``--threads`` intra-op threads
(default 1: a Ray trial with num_cpus=1 gets OMP_NUM_THREADS=1, and DataLoader
workers are single-threaded too); the fast path is also timed at torch's default.

Run: ``.venv/bin/python benchmarks/bench_data.py [--n 10000] [--rounds 2]``.
Target: fast / best DataLoader >= 10x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

# Run as a script (`python benchmarks/bench_data.py`): make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.data import CIFAR10_PRESET, BatchLoader, ImageSet, load_data  # noqa: E402

SHARED_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"
BATCH = 64


class PerImageDataset(Dataset):
    """The classic pipeline: one PIL image at a time through torchvision transforms."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray) -> None:
        self.images = images_nhwc
        self.labels = labels
        self.tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(CIFAR10_PRESET.mean, CIFAR10_PRESET.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def load_images(n: int) -> tuple[ImageSet, str]:
    """n real CIFAR-10 training images (n/10 per class), or synthetic ones."""
    if (SHARED_JPEG / "train").is_dir():
        b = load_data(f"imagefolder:{SHARED_JPEG}", max_per_class=n // 10, final=True)
        return b.train, f"CIFAR-10 JPEGs from ../shared ({len(b.train)} train images)"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return ImageSet(x, y, tuple(str(i) for i in range(10))), (
        f"SYNTHETIC uint8 images ({n}); ../shared/data/cifar10-jpeg not found"
    )


def fast_epoch(loader: BatchLoader, epoch: int, threads: int) -> float:
    """Images/s of one epoch of the fast path with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader.epoch(epoch))
    return n / (time.perf_counter() - t)


def dataloader_epoch(dl: DataLoader, threads: int) -> float:
    """Images/s of one epoch of a (warmed-up) DataLoader."""
    torch.set_num_threads(threads)  # matters for num_workers=0 (runs in this process)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in dl)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images (default 10 000)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()

    t = time.perf_counter()
    data, source = load_images(args.n)
    print(f"data: {source}; decoded in {time.perf_counter() - t:.1f} s")
    print(f"torch {torch.__version__}, batch {BATCH}, CPU ({os.cpu_count()} cores)\n")

    default_threads = torch.get_num_threads()
    loader = BatchLoader(data, CIFAR10_PRESET, BATCH, "cpu", train=True, seed=0)
    ds = PerImageDataset(data.images.permute(0, 2, 3, 1).numpy(), data.labels.numpy())
    dls = {
        w: DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            num_workers=w,
            persistent_workers=w > 0,
            generator=torch.Generator().manual_seed(0),
        )
        for w in (0, 1, 2)
    }
    fast_1 = f"fast path (BatchLoader), {args.threads} thread(s)"
    fast_d = f"fast path (BatchLoader), {default_threads} threads (torch default)"
    best: dict[str, float] = {}
    fast_epoch(loader, 0, args.threads)  # warm-up
    for dl in dls.values():  # warm-up epoch: starts the persistent workers
        dataloader_epoch(dl, args.threads)
    for r in range(1, args.rounds + 1):
        rates = {
            fast_1: fast_epoch(loader, r, args.threads),
            fast_d: fast_epoch(loader, r, default_threads),
        }
        for w, dl in dls.items():
            rates[f"DataLoader per-image transforms, num_workers={w}"] = dataloader_epoch(
                dl, args.threads
            )
        for k, v in rates.items():
            best[k] = max(best.get(k, 0.0), v)
    del dls  # shut the workers down

    best_dl = max(v for k, v in best.items() if k.startswith("DataLoader"))
    width = max(map(len, best))
    print(f"{'pipeline':<{width}}  {'images/s':>10}  {'vs best DataLoader':>18}")
    for name, rate in best.items():
        print(f"{name:<{width}}  {rate:>10,.0f}  {rate / best_dl:>17.1f}x")
    ratio = max(best[fast_1], best[fast_d]) / best_dl
    verdict = "met" if ratio >= 10 else "NOT met"
    print(f"\nfast / best DataLoader = {ratio:.1f}x (target >= 10x: {verdict})")


if __name__ == "__main__":
    main()
