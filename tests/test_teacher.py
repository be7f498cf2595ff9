"""Tests of study/teacher.py: registry, checkpoints, cost matrices, CLI.

The digits teacher is trained once per module for 2 epochs (a few seconds on a CPU);
every other test uses tiny synthetic models and features. Independent references are
written here in NumPy float64 (CKA, cosine distance, mdistiller's lr rule).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from study import teacher as T
from trainables.data import DataPreset, ImageSet, load_data
from trainables.models import build
from trainables.types import ModelOutputs

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- references


def cka_distance_reference(mats: list[np.ndarray]) -> np.ndarray:
    """1 − linear CKA of methods.md §5, pair by pair, in float64 (independent of the code)."""
    xs = [m.astype(np.float64) - m.astype(np.float64).mean(axis=0, keepdims=True) for m in mats]
    c = len(xs)
    d = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            cross = np.linalg.norm(xs[j].T @ xs[i], "fro") ** 2
            norm = np.linalg.norm(xs[i].T @ xs[i], "fro") * np.linalg.norm(xs[j].T @ xs[j], "fro")
            d[i, j] = 1.0 - cross / norm
    return d


def rows_of(feature_maps: np.ndarray) -> np.ndarray:
    """[n, ch, h, w] -> one row per (image, position), one column per channel, by loops."""
    n, ch, h, w = feature_maps.shape
    out = np.empty((n * h * w, ch))
    r = 0
    for k in range(n):
        for y in range(h):
            for x in range(w):
                out[r] = feature_maps[k, :, y, x]
                r += 1
    return out


# --------------------------------------------------------------------------- tiny models


class TinyNet(nn.Module):
    """A synthetic teacher obeying the model contract: conv stage -> pooled -> linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: Tensor) -> ModelOutputs:
        f = torch.relu(self.conv(x))
        pooled = f.mean(dim=(2, 3))
        return ModelOutputs(self.fc(pooled), (f,), pooled)


def tiny_net(num_classes: int, seed: int = 0) -> TinyNet:
    """A TinyNet with seeded weights, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet(num_classes).eval()


def synthetic_set(counts: list[int], size: int = 4, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    # Shuffle so that class members are not contiguous (selection must not rely on it).
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    images = torch.randint(0, 256, (labels.numel(), 1, size, size), generator=gen)
    return ImageSet(images.to(torch.uint8), labels, tuple(f"c{i}" for i in range(len(counts))))


GRAY = DataPreset(mean=(0.5,), std=(0.25,), crop_padding=0, flip=False)


def normalise(images: Tensor, preset: DataPreset) -> Tensor:
    """The test transform written out: [0, 1] scale, then (x − mean) / std per channel."""
    mean = torch.tensor(preset.mean).view(1, -1, 1, 1)
    std = torch.tensor(preset.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


# --------------------------------------------------------------------------- pure parts


def test_learning_rate_matches_mdistiller_rule() -> None:
    recipe = T.default_recipe("cifar100")
    assert (recipe.epochs, recipe.lr, recipe.batch_size) == (240, 0.05, 64)
    stages = np.asarray([150, 180, 210])
    for epoch in (1, 150, 151, 180, 181, 210, 211, 240):
        expected = 0.05 * 0.1 ** int(np.sum(epoch > stages))  # mdistiller adjust_learning_rate
        assert T.learning_rate(recipe, epoch, 240) == pytest.approx(expected)
    cos = T.default_recipe("digits")
    assert T.learning_rate(cos, 1, 30) == pytest.approx(cos.lr)
    assert T.learning_rate(cos, 16, 30) == pytest.approx(cos.lr * 0.5 * (1 + math.cos(math.pi / 2)))


def test_default_max_per_class_rule() -> None:
    assert T.default_max_per_class(10) == 500
    assert T.default_max_per_class(100) == 500
    assert T.default_max_per_class(200) == 250
    assert T.default_max_per_class(1000) == 50
    assert T.default_max_per_class(21841) == 50


def test_select_images_per_class_truncates_and_is_seeded() -> None:
    data = synthetic_set([7, 3, 5])
    idx = T.select_images_per_class(data.labels, 3, seed=1, max_per_class=None)
    assert idx.shape == (3, 3)  # truncated to the smallest class
    for c in range(3):
        assert torch.all(data.labels[idx[c]] == c)
        assert idx[c].unique().numel() == 3
    assert torch.equal(idx, T.select_images_per_class(data.labels, 3, seed=1, max_per_class=None))
    other = T.select_images_per_class(data.labels, 3, seed=2, max_per_class=None)
    assert not torch.equal(idx[0], other[0])  # class 0 has 7 images: 210 ordered choices
    capped = T.select_images_per_class(data.labels, 3, seed=1, max_per_class=2)
    assert capped.shape == (3, 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        T.select_images_per_class(synthetic_set([3, 1]).labels, 2, seed=0, max_per_class=None)


def test_cost_from_features_matches_reference_cka() -> None:
    gen = torch.Generator().manual_seed(0)
    # Unequal classes given as a sequence: truncated to the smallest (4 images).
    feats = [torch.randn(n, 3, 2, 2, generator=gen) for n in (6, 4, 5)]
    feats[1] = feats[1] + 0.5 * feats[0][:4]  # correlated pair -> smaller distance
    d = T.cost_from_features(feats)
    ref = cka_distance_reference([rows_of(f[:4].numpy()) for f in feats])
    assert d.dtype == torch.float32 and d.shape == (3, 3)
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-5)
    assert torch.equal(d, d.T)
    assert torch.all(d.diagonal() == 0)
    assert d.min() >= 0 and d.max() <= 1
    # Vector features [C, n, d] are rows already.
    vec = torch.randn(4, 6, 5, generator=gen)
    np.testing.assert_allclose(
        T.cost_from_features(vec).numpy(),
        cka_distance_reference([v.numpy() for v in vec]),
        atol=1e-5,
    )


def test_cost_from_features_1000_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1000, 3, 4, 1, 1, generator=gen)  # 3 images, 1x1 maps, 4 channels
    d = T.cost_from_features(feats)
    assert d.shape == (1000, 1000)
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d.min() >= 0 and d.max() <= 1
    pick = [0, 17, 999]
    ref = cka_distance_reference([feats[i].reshape(3, 4).numpy() for i in pick])
    np.testing.assert_allclose(d[pick][:, pick].numpy(), ref, atol=1e-5)


def test_classifier_cosine_cost_matches_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen)
    w[4] = -w[0]  # antiparallel rows: distance 2, kept raw (not clamped to 1)
    d = T.classifier_cosine_cost(w)
    wn = w.double().numpy()
    ref = np.array(
        [
            [1 - wn[i] @ wn[j] / (np.linalg.norm(wn[i]) * np.linalg.norm(wn[j])) for j in range(5)]
            for i in range(5)
        ]
    )
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-6)
    assert d[0, 4] == pytest.approx(2.0)
    assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
    assert d.min() >= 0 and d.max() <= 2


def test_build_cost_matrix_pipeline_matches_hand_computation() -> None:
    """Selection + test transform + last-stage rows + CKA, recomputed step by step."""
    net = tiny_net(3)
    data = synthetic_set([6, 4, 5], size=3)
    d = T.build_cost_matrix(net, data, GRAY, "cka", seed=3, max_per_class=None, batch_size=4)
    idx = T.select_images_per_class(data.labels, 3, seed=3, max_per_class=500)
    with torch.no_grad():
        mats = [
            rows_of(net(normalise(data.images[idx[c]], GRAY)).features[-1].numpy())
            for c in range(3)
        ]
    np.testing.assert_allclose(d.numpy(), cka_distance_reference(mats), atol=1e-5)
    other = T.build_cost_matrix(net, data, GRAY, "cka", seed=4, max_per_class=None)
    assert not torch.allclose(d, other)  # another sample of images -> another D
    cos = T.build_cost_matrix(net, data, GRAY, "classifier_cosine")
    assert torch.equal(cos, T.classifier_cosine_cost(net.fc.weight))


def test_build_cost_matrix_1000_classes_synthetic_teacher() -> None:
    counts = [3 if c % 2 else 2 for c in range(1000)]  # unequal: truncated to 2 per class
    data = synthetic_set(counts, size=2)
    net = tiny_net(1000)
    d = T.build_cost_matrix(net, data, GRAY, "cka", seed=0, max_per_class=None, batch_size=512)
    assert d.shape == (1000, 1000) and d.dtype == torch.float32
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert torch.isfinite(d).all() and d.min() >= 0 and d.max() <= 1


def test_cost_cache_hit_and_seed_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> Tensor:
        calls.append(1)
        return torch.eye(3, dtype=torch.float64)  # stored as float32

    key = T.cost_cache_key("ab" * 32, "fp", "cka", 0, 50)
    first = T.cached_cost(tmp_path, key, compute)
    second = T.cached_cost(tmp_path, key, compute)
    assert (first.cache_hit, second.cache_hit, len(calls)) == (False, True, 1)
    assert second.matrix.dtype == torch.float32 and torch.equal(first.matrix, second.matrix)
    assert first.sha256 == second.sha256 == T.sha256_file(first.path)
    other = T.cost_cache_key("ab" * 32, "fp", "cka", 1, 50)
    assert other["id"] != key["id"]
    assert T.cached_cost(tmp_path, other, compute).cache_hit is False and len(calls) == 2
    # The classifier cost ignores the sampling seed: one entry per teacher.
    a = T.cost_cache_key("ab" * 32, "fp", "classifier_cosine", 0, None)
    b = T.cost_cache_key("ab" * 32, "fp", "classifier_cosine", 5, 50)
    assert a == b
    # The .pt is the bare tensor (what a trial loads); a damaged one is rebuilt.
    assert torch.equal(torch.load(first.path, weights_only=True), first.matrix)
    first.path.write_bytes(b"garbage")
    rebuilt = T.cached_cost(tmp_path, key, compute)
    assert not rebuilt.cache_hit and len(calls) == 3 and torch.equal(rebuilt.matrix, first.matrix)
    # No temporary files left behind by the atomic writes.
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- checkpoints


def _perturbed(model: nn.Module) -> nn.Module:
    """Weights and BN statistics away from their init, so a missed load is visible."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=gen))
    return model.eval()


def test_save_load_round_trip_same_logits(tmp_path: Path) -> None:
    model = _perturbed(build("cnn_small", 10, in_channels=1))
    meta = {"arch": "cnn_small", "dataset": "digits", "num_classes": 10}
    info = T.save_teacher(model, meta, tmp_path / "digits__cnn_small")
    assert info.sha256 == T.sha256_file(info.ckpt_path)
    assert json.loads((info.ckpt_path.parent / "meta.json").read_text())["sha256"] == info.sha256
    loaded = T.load_teacher("cnn_small", 10, info.ckpt_path, in_channels=1)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("layout", ["mdistiller", "plain", "dataparallel"])
def test_external_checkpoint_formats(tmp_path: Path, layout: str) -> None:
    model = _perturbed(build("cnn_small", 10, in_channels=1))
    sd = model.state_dict()
    if layout == "mdistiller":  # CRD/mdistiller: {"model": sd, "epoch": ..., "best_acc": ...}
        obj: object = {"model": sd, "epoch": 240, "best_acc": torch.tensor(79.4)}
    elif layout == "plain":
        obj = sd
    else:
        obj = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(obj, path)
    loaded = T.load_teacher("cnn_small", 10, path, in_channels=1)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_mismatch_error_lists_keys(tmp_path: Path) -> None:
    sd = build("cnn_small", 10, in_channels=1).state_dict()
    dropped = sorted(sd)[0]
    bad = {k: v for k, v in sd.items() if k != dropped}
    bad["bogus.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(T.TeacherCheckpointError) as err:
        T.load_teacher("cnn_small", 10, path, in_channels=1)
    msg = str(err.value)
    assert "missing keys (1)" in msg and dropped in msg
    assert "unexpected keys (1)" in msg and "bogus.weight" in msg
    # Wrong number of classes: the head's shapes are listed with both sides.
    torch.save(sd, path)
    with pytest.raises(T.TeacherCheckpointError, match="shape mismatches") as err:
        T.load_teacher("cnn_small", 7, path, in_channels=1)
    head = T._find_classifier(build("cnn_small", 10, in_channels=1))
    assert "(10," in str(err.value) and "(7," in str(err.value)
    assert head.weight.shape[0] == 10


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"not a checkpoint\n"])
def test_unreadable_checkpoint_names_the_file(tmp_path: Path, content: bytes) -> None:
    """Empty, truncated and foreign files: one clear error from the one reader, naming the
    path (``trainables.models.load_state_file``), raised by ``load_teacher`` as a
    ``TeacherCheckpointError``."""
    from trainables.models import CheckpointError, load_state_file

    path = tmp_path / "ckpt_epoch_240.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as err:
        load_state_file(path)
    assert str(path) in str(err.value)
    with pytest.raises(T.TeacherCheckpointError) as err2:
        T.load_teacher("cnn_small", 10, path, in_channels=1)
    assert str(path) in str(err2.value)
    # A truncated real checkpoint (a download cut short).
    good = tmp_path / "good.pth"
    torch.save({"model": build("cnn_small", 10, in_channels=1).state_dict()}, good)
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(T.TeacherCheckpointError, match="not a readable torch checkpoint") as err2:
        T.load_teacher("cnn_small", 10, path, in_channels=1)
    assert str(path) in str(err2.value)
    with pytest.raises(FileNotFoundError):
        load_state_file(tmp_path / "missing.pth")


def test_checkpoint_pickling_objects_is_refused(tmp_path: Path) -> None:
    """A real checkpoint that pickles an object (an argparse Namespace, as many training
    scripts save) is not run: the weights_only refusal names the file and the fix."""
    import argparse

    sd = build("cnn_small", 10, in_channels=1).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.05)}, path)
    with pytest.raises(T.TeacherCheckpointError, match="weights_only=True") as err:
        T.load_teacher("cnn_small", 10, path, in_channels=1)
    assert str(path) in str(err.value) and "re-save just the state dict" in str(err.value)


def test_state_dict_key_and_non_tensor_payload(tmp_path: Path) -> None:
    from trainables.models import CheckpointError, load_state_file

    sd = build("cnn_small", 10, in_channels=1).state_dict()
    path = tmp_path / "c.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    assert set(load_state_file(path)) == set(sd)
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(CheckpointError, match="expected a state dict") as err:
        load_state_file(path)
    assert str(path) in str(err.value)


def test_teacher_lr_is_the_loops_lr_at() -> None:
    from trainables.loop import lr_at

    for dataset, epochs in (("cifar100", 240), ("digits", 30), ("cifar100", 7)):
        recipe = T.default_recipe(dataset)
        recipe = T.TeacherRecipe(**{**recipe.__dict__, "epochs": epochs})
        cfg = T.teacher_trial_config(recipe, dataset=dataset, arch="cnn_large")
        assert list(cfg.losses) == ["ce"] and cfg.losses["ce"].loss == "ce"
        assert not cfg.final and cfg.student.arch == "cnn_large"
        assert cfg.teacher.checkpoint is None
        for epoch in range(1, epochs + 1):
            assert T.learning_rate(recipe, epoch, epochs) == lr_at(cfg, epoch)


def test_fit_teacher_is_seeded_and_leaves_global_rng() -> None:
    kw = dict(epochs=1, max_per_class=12, batch_size=32, device="cpu")
    before = torch.random.get_rng_state()
    a, meta_a = T.fit_teacher("digits", "cnn_small", seed=3, **kw)
    assert torch.equal(torch.random.get_rng_state(), before)
    b, _ = T.fit_teacher("digits", "cnn_small", seed=3, **kw)
    c, _ = T.fit_teacher("digits", "cnn_small", seed=4, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert meta_a["epochs"] == 1 and meta_a["max_per_class"] == 12 and meta_a["seed"] == 3


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def digits_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, T.TeacherInfo]:
    teachers = tmp_path_factory.mktemp("storage") / "teachers"
    info = T.get_or_train_teacher(
        "digits", "cnn_large", teachers_dir=teachers, epochs=1, seed=0, device="cpu"
    )
    return teachers, info


def test_registry_trains_digits_then_reuses(digits_registry: tuple[Path, T.TeacherInfo]) -> None:
    teachers, info = digits_registry
    assert info.trained
    assert info.ckpt_path == teachers.absolute() / "digits__cnn_large" / "ckpt.pth"
    meta = json.loads((info.ckpt_path.parent / "meta.json").read_text())
    assert meta["sha256"] == T.sha256_file(info.ckpt_path) == info.sha256
    assert meta["arch"] == "cnn_large" and meta["num_classes"] == 10 and meta["epochs"] == 1
    assert meta["val_fraction"] == 0.1 and meta["split_seed"] == 0
    mtime = info.ckpt_path.stat().st_mtime_ns
    again = T.get_or_train_teacher("digits", "cnn_large", teachers_dir=teachers, epochs=1)
    assert not again.trained and again.sha256 == info.sha256
    assert info.ckpt_path.stat().st_mtime_ns == mtime
    # The stored accuracy is the loaded teacher's accuracy on the tuning validation split.
    bundle = load_data("digits", val_fraction=0.1, split_seed=0)
    loaded = T.load_teacher("cnn_large", 10, info.ckpt_path, in_channels=1)
    acc = T.evaluate_top1(loaded, bundle.eval, bundle.preset, device="cpu")
    assert acc == pytest.approx(meta["val_top1"])
    assert acc > 0.3  # 1 epoch on 10 classes: far above chance (0.1)


def test_registry_refuses_other_split(digits_registry: tuple[Path, T.TeacherInfo]) -> None:
    teachers, _ = digits_registry
    with pytest.raises(T.TeacherCheckpointError, match="validation"):
        T.get_or_train_teacher("digits", "cnn_large", teachers_dir=teachers, split_seed=1)


def test_registry_refusal_message(tmp_path: Path) -> None:
    with pytest.raises(T.TeacherNotFoundError) as err:
        T.get_or_train_teacher("cifar100", "resnet32x4", teachers_dir=tmp_path)
    msg = str(err.value)
    folder = tmp_path.absolute() / "cifar100__resnet32x4"
    assert str(folder / "ckpt.pth") in msg  # where it looked
    assert "python study/teacher.py --dataset cifar100 --arch resnet32x4" in msg
    assert "allow_train=True" in msg and "external" in msg
    assert not folder.exists()  # nothing was created, nothing trained
    with pytest.raises(T.TeacherNotFoundError, match="allow_train=False"):
        T.get_or_train_teacher("digits", "cnn_large", teachers_dir=tmp_path, allow_train=False)


def test_registry_lock_blocks_second_trainer(tmp_path: Path) -> None:
    folder = T.registry_folder(tmp_path, "digits", "cnn_small")
    folder.mkdir(parents=True)
    with open(folder / T.LOCK_NAME, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # another "process" is training
        with pytest.raises(TimeoutError, match="another process"):
            T.get_or_train_teacher(
                "digits", "cnn_small", teachers_dir=tmp_path, lock_timeout=0.2, epochs=1
            )
    assert not (folder / "ckpt.pth").exists()


def test_registry_detects_tampered_weights(tmp_path: Path) -> None:
    model = build("cnn_small", 10, in_channels=1)
    meta = {
        "arch": "cnn_small",
        "dataset": "digits",
        "num_classes": 10,
        "val_fraction": 0.1,
        "split_seed": 0,
    }
    info = T.save_teacher(model, meta, T.registry_folder(tmp_path, "digits", "cnn_small"))
    assert (
        T.get_or_train_teacher("digits", "cnn_small", teachers_dir=tmp_path).sha256 == info.sha256
    )
    torch.save({"model": _perturbed(model).state_dict()}, info.ckpt_path)
    with pytest.raises(T.TeacherCheckpointError, match="sha256"):
        T.get_or_train_teacher("digits", "cnn_small", teachers_dir=tmp_path)


def test_cost_matrices_of_digits_teacher(digits_registry: tuple[Path, T.TeacherInfo]) -> None:
    teachers, info = digits_registry
    bundle = load_data("digits", val_fraction=0.1, split_seed=0)
    common = dict(arch="cnn_large", data=bundle.train, preset=bundle.preset, in_channels=1)
    first = T.get_cost_matrix(info.ckpt_path, bundle.fingerprint(), "cka", 0, None, **common)
    d = first.matrix
    assert d.shape == (10, 10) and d.dtype == torch.float32
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d.min() >= 0 and d.max() <= 1
    off = d[~torch.eye(10, dtype=torch.bool)]
    assert off.min() > 0  # distinct classes are not identical
    assert first.path.parent == info.ckpt_path.parent  # cached in the teacher's folder
    assert first.path.name.startswith("cost_") and first.key["max_per_class"] == 500
    second = T.get_cost_matrix(info.ckpt_path, bundle.fingerprint(), "cka", 0, 500, **common)
    assert not first.cache_hit and second.cache_hit  # None resolves to the default 500
    assert second.path == first.path and torch.equal(second.matrix, d)
    reseeded = T.get_cost_matrix(info.ckpt_path, bundle.fingerprint(), "cka", 1, 20, **common)
    assert not reseeded.cache_hit and reseeded.path != first.path
    assert not torch.allclose(reseeded.matrix, d)
    cos = T.get_cost_matrix(
        info.ckpt_path, bundle.fingerprint(), "classifier_cosine", 0, None, **common
    )
    teacher = T.load_teacher("cnn_large", 10, info.ckpt_path, in_channels=1)
    assert torch.equal(cos.matrix, T.classifier_cosine_cost(T._find_classifier(teacher).weight))


def test_ensure_teacher_and_cost(digits_registry: tuple[Path, T.TeacherInfo]) -> None:
    teachers, info = digits_registry
    res = T.ensure_teacher_and_cost(
        "digits", "cnn_large", teachers_dir=teachers, cost_kind="cka", cost_seed=7
    )
    assert res.cost is not None and not res.teacher.trained
    assert res.teacher.ckpt_path.is_absolute() and res.cost.path.is_absolute()
    assert res.teacher.sha256 == T.sha256_file(res.teacher.ckpt_path)
    assert res.cost.sha256 == T.sha256_file(res.cost.path)
    prov = res.provenance()
    assert prov["teacher/sha256"] == info.sha256 and prov["cost/seed"] == "7"
    again = T.ensure_teacher_and_cost(
        "digits", "cnn_large", teachers_dir=teachers, cost_kind="cka", cost_seed=7
    )
    assert again.cost is not None and again.cost.cache_hit
    # An external checkpoint: strict-loaded on the driver, its costs cached in the registry.
    ext = teachers.parent / "external.pth"
    ext.write_bytes(info.ckpt_path.read_bytes())
    res_ext = T.ensure_teacher_and_cost(
        "digits",
        "cnn_large",
        teachers_dir=teachers,
        teacher_path=ext,
        cost_kind="classifier_cosine",
    )
    assert res_ext.teacher.ckpt_path == ext.absolute() and res_ext.cost is not None
    assert res_ext.cost.path.parent == info.ckpt_path.parent


def test_cli_main_reuses_and_refuses(
    digits_registry: tuple[Path, T.TeacherInfo], capsys: pytest.CaptureFixture[str]
) -> None:
    teachers, info = digits_registry
    base = ["--dataset", "digits", "--arch", "cnn_large", "--out", str(teachers), "--quiet"]
    assert T.main(base) == 0
    out = capsys.readouterr().out
    assert "reused" in out and f"val/top1 {info.val_top1:.4f}" in out and info.sha256 in out
    assert T.main([*base, "--split-seed", "3"]) == 2  # trained on another split: refused
    assert "validation images" in capsys.readouterr().err


# ~5 s on an idle 2-core machine (a fresh interpreter imports torch), ~25 s when busy.
def test_cli_subprocess_trains_and_prints_accuracy(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # works whether or not the package is installed
    cmd = [sys.executable, "study/teacher.py", "--dataset", "digits", "--arch", "cnn_large"]
    cmd += ["--epochs", "2", "--out", str(tmp_path), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("val/top1"))
    acc = float(line.split()[1])
    meta = json.loads((tmp_path / "digits__cnn_large" / "meta.json").read_text())
    assert acc == pytest.approx(meta["val_top1"], abs=1e-4) and acc > 0.3
    assert "epoch 2/2" in proc.stderr  # the per-epoch log goes to stderr


def test_ensure_refuses_teacher_trained_on_another_split(tmp_path: Path) -> None:
    meta = {
        "arch": "cnn_small",
        "dataset": "digits",
        "num_classes": 10,
        "val_fraction": 0.1,
        "split_seed": 0,
        "data_fingerprint": "0123456789abcdef",  # not the fingerprint of today's split
    }
    T.save_teacher(
        build("cnn_small", 10, in_channels=1),
        meta,
        T.registry_folder(tmp_path, "digits", "cnn_small"),
    )
    with pytest.raises(T.TeacherCheckpointError, match="data split 0123456789abcdef"):
        T.ensure_teacher_and_cost("digits", "cnn_small", teachers_dir=tmp_path, cost_kind="cka")


def test_registry_two_concurrent_callers_train_once(tmp_path: Path) -> None:
    """flock locks belong to open file descriptions, so two threads contend like two
    processes: exactly one trains, the other waits and reuses its checkpoint."""
    from concurrent.futures import ThreadPoolExecutor

    def ask() -> T.TeacherInfo:
        return T.get_or_train_teacher(
            "digits", "cnn_small", teachers_dir=tmp_path, epochs=1, batch_size=256
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        infos = list(pool.map(lambda _: ask(), range(2)))
    assert sorted(i.trained for i in infos) == [False, True]
    assert infos[0].sha256 == infos[1].sha256


CIFAR10_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason="shared CIFAR-10 JPEG tree not present")
def test_cka_cost_on_real_cifar10_images_with_zoo_teacher(tmp_path: Path) -> None:
    """3-channel images and a CIFAR-zoo last stage ([B, 256, 8, 8] for resnet8x4)."""
    bundle = load_data(f"imagefolder:{CIFAR10_JPEG}", max_per_class=6, val_fraction=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build("resnet8x4", bundle.num_classes, in_channels=3).eval()
    meta = {"arch": "resnet8x4", "dataset": "cifar10-jpeg", "num_classes": 10}
    info = T.save_teacher(model, meta, tmp_path / "t")
    res = T.get_cost_matrix(
        info.ckpt_path,
        bundle.fingerprint(),
        "cka",
        0,
        None,
        arch="resnet8x4",
        data=bundle.train,
        preset=bundle.preset,
    )
    d = res.matrix
    assert d.shape == (10, 10) and torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)
    assert d.min() >= 0 and d.max() <= 1 and not res.cache_hit
    idx = T.select_images_per_class(bundle.train.labels, 10, seed=0, max_per_class=500)
    with torch.no_grad():
        maps = [
            model(normalise(bundle.train.images[idx[c]], bundle.preset)).features[-1]
            for c in range(10)
        ]
    ref = cka_distance_reference([rows_of(m.numpy()) for m in maps])
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-4)


def test_registry_folder_accepts_absolute_imagefolder_paths(tmp_path: Path) -> None:
    from study.teacher import registry_folder

    a = registry_folder(tmp_path, f"imagefolder:{tmp_path / 'data' / 'cifar10-jpeg'}", "cnn_large")
    b = registry_folder(tmp_path, f"imagefolder:{tmp_path / 'other' / 'cifar10-jpeg'}", "cnn_large")
    assert a.parent == tmp_path.absolute() and a.name.startswith("imagefolder-cifar10-jpeg-")
    assert a != b  # same folder name, different trees: different teachers
    with pytest.raises(ValueError, match="invalid arch"):
        registry_folder(tmp_path, "digits", "../x")
