"""Tests of the model zoo (trainables/models).

The strong test of checkpoint compatibility does not import the zoo's own blocks: each
reference architecture below is a *functional* forward pass written from the published
descriptions (He et al. 2016; Zagoruyko & Komodakis 2016; Simonyan & Zisserman 2015;
Sandler et al. 2018; Zhang et al. 2018; Ma et al. 2018) with the CRD/mdistiller naming.
Its parameters are created lazily, by name and shape, the first time the forward pass
needs them, so one pass yields both a checkpoint (``{"model": state_dict}``, as the
shared ``<name>_vanilla/ckpt_epoch_240.pth`` files) and the reference outputs. Loading the
checkpoint strictly proves key names and shapes; equal outputs prove BN/ReLU placement,
strides, shuffles and shortcuts. The reference pools use the zoo's literal fixed-size
pools (``AvgPool2d(8)``, ``avg_pool2d(x, 4)``, ...), so the zoo's global mean is checked
against them too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from trainables.models import MODELS, build, feature_shapes, load_state_file
from trainables.types import ModelOutputs

REQUIRED = [
    "resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2", "ShuffleV1",
    "ShuffleV2", "ResNet50", "cnn_small", "cnn_large",
    "tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2",
]  # fmt: skip

# Parameter counts (millions) with 100 classes, CRD (Tian et al. 2020) model table.
CRD_PARAMS_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "wrn_16_2": 0.70,
    "wrn_40_1": 0.57, "resnet56": 0.86, "resnet20": 0.28, "resnet110": 1.74,
    "resnet32": 0.47, "vgg13": 9.46, "vgg8": 3.97, "ResNet50": 23.71,
    "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}  # fmt: skip

# Stage channels shallow -> deep, from the architecture descriptions.
EXPECTED_CHANNELS = {
    **{n: [16, 16, 32, 64] for n in ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110")},
    "resnet8x4": [32, 64, 128, 256],
    "resnet32x4": [32, 64, 128, 256],
    "wrn_16_2": [16, 32, 64, 128],
    "wrn_40_1": [16, 16, 32, 64],
    "wrn_40_2": [16, 32, 64, 128],
    "vgg8": [64, 128, 256, 512, 512],
    "vgg13": [64, 128, 256, 512, 512],
    "MobileNetV2": [16, 12, 16, 48, 160],
    "ShuffleV1": [24, 240, 480, 960],
    "ShuffleV2": [24, 116, 232, 464],
    "ResNet50": [64, 256, 512, 1024, 2048],
    "tv_resnet18": [64, 128, 256, 512],
    "tv_resnet34": [64, 128, 256, 512],
    "tv_resnet50": [256, 512, 1024, 2048],
    "tv_mobilenet_v2": [24, 32, 96, 320],
}
EXPECTED_POOLED = {
    "vgg8": 512, "vgg13": 512, "MobileNetV2": 1280, "ShuffleV1": 960, "ShuffleV2": 1024,
    "tv_resnet50": 2048, "tv_mobilenet_v2": 1280, "ResNet50": 2048,
}  # fmt: skip


# --------------------------------------------------------------------------------------
# Independent functional references with lazily created, named parameters
# --------------------------------------------------------------------------------------


class LazyParams:
    """Creates each named tensor on first use (random, seeded) and applies the op."""

    def __init__(self, seed: int = 0) -> None:
        self.sd: dict[str, Tensor] = {}
        self.gen = torch.Generator().manual_seed(seed)

    def _get(self, key: str, shape: tuple[int, ...], make: Callable[[], Tensor]) -> Tensor:
        if key not in self.sd:
            self.sd[key] = make()
        assert tuple(self.sd[key].shape) == shape, (key, self.sd[key].shape, shape)
        return self.sd[key]

    # Values are float32-representable (the zoo stores float32) but computed in float64,
    # so the comparison below can be tight.
    def _randn(self, *shape: int, std: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=self.gen) * std).double()

    def _uniform(self, *shape: int) -> Tensor:
        return (0.5 + torch.rand(*shape, generator=self.gen)).double()

    def conv(
        self, name: str, x: Tensor, cout: int, k: int, stride: int, pad: int,
        groups: int = 1, bias: bool = False,
    ) -> Tensor:  # fmt: skip
        cin = x.shape[1]
        shape = (cout, cin // groups, k, k)
        fan_in = shape[1] * k * k
        w = self._get(f"{name}.weight", shape, lambda: self._randn(*shape, std=(2 / fan_in) ** 0.5))
        b = self._get(f"{name}.bias", (cout,), lambda: self._randn(cout, std=0.1)) if bias else None
        return F.conv2d(x, w, b, stride=stride, padding=pad, groups=groups)

    def bn(self, name: str, x: Tensor) -> Tensor:
        c = x.shape[1]
        w = self._get(f"{name}.weight", (c,), lambda: self._uniform(c))
        b = self._get(f"{name}.bias", (c,), lambda: self._randn(c, std=0.1))
        mean = self._get(f"{name}.running_mean", (c,), lambda: self._randn(c, std=0.1))
        var = self._get(f"{name}.running_var", (c,), lambda: self._uniform(c))
        self._get(f"{name}.num_batches_tracked", (), lambda: torch.tensor(7))
        # Inference-mode BN written out: (x - mean) / sqrt(var + eps) * w + b.
        shape = (1, c, 1, 1)
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * w.view(shape) + b.view(
            shape
        )

    def linear(self, name: str, x: Tensor, cout: int) -> Tensor:
        d = x.shape[1]
        w = self._get(f"{name}.weight", (cout, d), lambda: self._randn(cout, d, std=d**-0.5))
        b = self._get(f"{name}.bias", (cout,), lambda: self._randn(cout, std=0.1))
        return x @ w.t() + b


relu = torch.relu
RefOut = tuple[Tensor, list[Tensor], Tensor]


def shuffle(x: Tensor, groups: int) -> Tensor:
    """Channel shuffle as an index permutation: output k takes input (k % g)*(C/g) + k//g."""
    c = x.shape[1]
    idx = torch.tensor([(k % groups) * (c // groups) + k // groups for k in range(c)])
    return x[:, idx]


def ref_cifar_resnet(P: LazyParams, x: Tensor, depth: int, widths: list[int], C: int) -> RefOut:
    n = (depth - 2) // 6
    x = relu(P.bn("bn1", P.conv("conv1", x, widths[0], 3, 1, 1)))
    feats = [x]
    for s in range(3):
        cout = widths[s + 1]
        for b in range(n):
            p = f"layer{s + 1}.{b}."
            stride = 2 if s > 0 and b == 0 else 1
            o = relu(P.bn(p + "bn1", P.conv(p + "conv1", x, cout, 3, stride, 1)))
            o = P.bn(p + "bn2", P.conv(p + "conv2", o, cout, 3, 1, 1))
            if stride != 1 or x.shape[1] != cout:
                x = P.bn(p + "downsample.1", P.conv(p + "downsample.0", x, cout, 1, stride, 0))
            x = relu(o + x)
        feats.append(x)
    pooled = F.avg_pool2d(x, 8).flatten(1)  # the zoo's AvgPool2d(8)
    return P.linear("fc", pooled, C), feats, pooled


def ref_wrn(P: LazyParams, x: Tensor, depth: int, k: int, C: int) -> RefOut:
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    x = P.conv("conv1", x, 16, 3, 1, 1)
    feats = [x]
    for s in range(3):
        for b in range(n):
            p = f"block{s + 1}.layer.{b}."
            stride = (1 if s == 0 else 2) if b == 0 else 1
            cin, cout = x.shape[1], ch[s + 1]
            a = relu(P.bn(p + "bn1", x))
            o = relu(P.bn(p + "bn2", P.conv(p + "conv1", a, cout, 3, stride, 1)))
            o = P.conv(p + "conv2", o, cout, 3, 1, 1)
            x = (x if cin == cout else P.conv(p + "convShortcut", a, cout, 1, stride, 0)) + o
        feats.append(x)
    pooled = F.avg_pool2d(relu(P.bn("bn1", x)), 8).flatten(1)
    return P.linear("fc", pooled, C), feats, pooled


def ref_vgg_bn(P: LazyParams, x: Tensor, cfg: list[list[int]], C: int) -> RefOut:
    feats = []
    for i, widths in enumerate(cfg):
        for j, w in enumerate(widths):
            if j > 0:
                x = relu(x)
            x = P.bn(f"block{i}.{3 * j + 1}", P.conv(f"block{i}.{3 * j}", x, w, 3, 1, 1, bias=True))
        x = relu(x)
        feats.append(x)
        if i < 3:  # max-pool after block0..2; the one after block3 only at 64 px
            x = F.max_pool2d(x, 2, 2)
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return P.linear("classifier", pooled, C), feats, pooled


def ref_mobilenetv2_half(P: LazyParams, x: Tensor, C: int) -> RefOut:
    setting = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip
    x = relu(P.bn("conv1.1", P.conv("conv1.0", x, 16, 3, 2, 1)))
    feats = [x]
    for s, (t, c, n, st) in enumerate(setting):
        c //= 2
        for b in range(n):
            p = f"blocks.{s}.{b}.conv."
            cin, stride = x.shape[1], (st if b == 0 else 1)
            hid = cin * t
            o = relu(P.bn(p + "1", P.conv(p + "0", x, hid, 1, 1, 0)))
            o = relu(P.bn(p + "4", P.conv(p + "3", o, hid, 3, stride, 1, groups=hid)))
            o = P.bn(p + "7", P.conv(p + "6", o, c, 1, 1, 0))
            x = x + o if stride == 1 and cin == c else o
        if s in (1, 2, 4, 6):
            feats.append(x)
    x = relu(P.bn("conv2.1", P.conv("conv2.0", x, 1280, 1, 1, 0)))
    pooled = F.avg_pool2d(x, 2, ceil_mode=True).flatten(1)  # zoo: AvgPool2d(32 // 16)
    return P.linear("classifier.0", pooled, C), feats, pooled


def ref_shufflev1(P: LazyParams, x: Tensor, C: int) -> RefOut:
    x = relu(P.bn("bn1", P.conv("conv1", x, 24, 1, 1, 0)))
    feats = [x]
    for s, (w, n) in enumerate(zip([240, 480, 960], [4, 8, 4], strict=True)):
        for b in range(n):
            p = f"layer{s + 1}.{b}."
            cin, stride = x.shape[1], (2 if b == 0 else 1)
            out = w - cin if b == 0 else w
            mid, g1 = out // 4, (1 if cin == 24 else 3)
            o = shuffle(relu(P.bn(p + "bn1", P.conv(p + "conv1", x, mid, 1, 1, 0, groups=g1))), g1)
            o = relu(P.bn(p + "bn2", P.conv(p + "conv2", o, mid, 3, stride, 1, groups=mid)))
            o = P.bn(p + "bn3", P.conv(p + "conv3", o, out, 1, 1, 0, groups=3))
            x = relu(torch.cat([o, F.avg_pool2d(x, 3, 2, 1)], 1) if stride == 2 else o + x)
        feats.append(x)
    pooled = F.avg_pool2d(x, 4).flatten(1)
    return P.linear("linear", pooled, C), feats, pooled


def ref_shufflev2(P: LazyParams, x: Tensor, C: int) -> RefOut:
    x = relu(P.bn("bn1", P.conv("conv1", x, 24, 1, 1, 0)))
    feats = [x]
    for s, (w, n) in enumerate(zip([116, 232, 464], [3, 7, 3], strict=True)):
        p, cin, mid = f"layer{s + 1}.0.", x.shape[1], w // 2
        left = P.bn(p + "bn1", P.conv(p + "conv1", x, cin, 3, 2, 1, groups=cin))
        left = relu(P.bn(p + "bn2", P.conv(p + "conv2", left, mid, 1, 1, 0)))
        right = relu(P.bn(p + "bn3", P.conv(p + "conv3", x, mid, 1, 1, 0)))
        right = P.bn(p + "bn4", P.conv(p + "conv4", right, mid, 3, 2, 1, groups=mid))
        right = relu(P.bn(p + "bn5", P.conv(p + "conv5", right, mid, 1, 1, 0)))
        x = shuffle(torch.cat([left, right], 1), 2)
        for b in range(1, n + 1):
            p = f"layer{s + 1}.{b}."
            keep, branch = x[:, :mid], x[:, mid:]
            o = relu(P.bn(p + "bn1", P.conv(p + "conv1", branch, mid, 1, 1, 0)))
            o = P.bn(p + "bn2", P.conv(p + "conv2", o, mid, 3, 1, 1, groups=mid))
            o = relu(P.bn(p + "bn3", P.conv(p + "conv3", o, mid, 1, 1, 0)))
            x = shuffle(torch.cat([keep, o], 1), 2)
        feats.append(x)
    pooled = F.avg_pool2d(relu(P.bn("bn2", P.conv("conv2", x, 1024, 1, 1, 0))), 4).flatten(1)
    return P.linear("linear", pooled, C), feats, pooled


def ref_resnet50_cifar(P: LazyParams, x: Tensor, C: int) -> RefOut:
    x = relu(P.bn("bn1", P.conv("conv1", x, 64, 3, 1, 1)))
    feats = [x]
    for s, (planes, n) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3], strict=True)):
        for b in range(n):
            p = f"layer{s + 1}.{b}."
            stride, cout = (2 if s > 0 and b == 0 else 1), 4 * planes
            o = relu(P.bn(p + "bn1", P.conv(p + "conv1", x, planes, 1, 1, 0)))
            o = relu(P.bn(p + "bn2", P.conv(p + "conv2", o, planes, 3, stride, 1)))
            o = P.bn(p + "bn3", P.conv(p + "conv3", o, cout, 1, 1, 0))
            if stride != 1 or x.shape[1] != cout:
                x = P.bn(p + "shortcut.1", P.conv(p + "shortcut.0", x, cout, 1, stride, 0))
            x = relu(o + x)
        feats.append(x)
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return P.linear("linear", pooled, C), feats, pooled


S16, X4 = [16, 16, 32, 64], [32, 64, 128, 256]
VGG_S = [[64], [128], [256], [512], [512]]
VGG_B = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]
REFERENCES: dict[str, Callable[[LazyParams, Tensor, int], RefOut]] = {
    "resnet8": lambda P, x, C: ref_cifar_resnet(P, x, 8, S16, C),
    "resnet20": lambda P, x, C: ref_cifar_resnet(P, x, 20, S16, C),
    "resnet32": lambda P, x, C: ref_cifar_resnet(P, x, 32, S16, C),
    "resnet56": lambda P, x, C: ref_cifar_resnet(P, x, 56, S16, C),
    "resnet110": lambda P, x, C: ref_cifar_resnet(P, x, 110, S16, C),
    "resnet8x4": lambda P, x, C: ref_cifar_resnet(P, x, 8, X4, C),
    "resnet32x4": lambda P, x, C: ref_cifar_resnet(P, x, 32, X4, C),
    "wrn_16_2": lambda P, x, C: ref_wrn(P, x, 16, 2, C),
    "wrn_40_1": lambda P, x, C: ref_wrn(P, x, 40, 1, C),
    "wrn_40_2": lambda P, x, C: ref_wrn(P, x, 40, 2, C),
    "vgg8": lambda P, x, C: ref_vgg_bn(P, x, VGG_S, C),
    "vgg13": lambda P, x, C: ref_vgg_bn(P, x, VGG_B, C),
    "MobileNetV2": ref_mobilenetv2_half,
    "ShuffleV1": ref_shufflev1,
    "ShuffleV2": ref_shufflev2,
    "ResNet50": ref_resnet50_cifar,
}
# The brief's representative members run by default; the others repeat a checked family
# at more depth/width and only cost time.
_REPRESENTATIVE = {"resnet8x4", "resnet20", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1",
                   "ShuffleV2", "ResNet50"}  # fmt: skip
ZOO_CASES = [
    n if n in _REPRESENTATIVE else pytest.param(n, marks=pytest.mark.slow) for n in REFERENCES
]


def _reference_checkpoint(name: str, C: int, x: Tensor) -> tuple[dict[str, Tensor], RefOut]:
    P = LazyParams(seed=len(name))
    with torch.no_grad():
        out = REFERENCES[name](P, x.double(), C)
    return P.sd, out


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_loads_independent_checkpoint_and_matches_reference(name: str, tmp_path: Path) -> None:
    C = 7
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sd, (ref_logits, ref_feats, ref_pooled) = _reference_checkpoint(name, C, x)
    # CRD's checkpoint layout: the state dict under "model" next to training metadata.
    path = tmp_path / f"{name}_vanilla_ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": sd, "best_acc": torch.tensor(73.5)}, path)

    ckpt = torch.load(path, weights_only=True)
    model = build(name, C)
    model.load_state_dict(ckpt["model"], strict=True)  # exact key names and shapes

    model = build(name, C, weights_path=str(path)).double().eval()
    with torch.no_grad():
        out = model(x.double())
    assert isinstance(out, ModelOutputs)
    assert len(out.features) == len(ref_feats)
    for got, want in zip(out.features, ref_feats, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
    torch.testing.assert_close(out.pooled, ref_pooled, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.logits, ref_logits, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CRD_PARAMS_M))
def test_parameter_counts_match_crd_table(name: str) -> None:
    n = sum(p.numel() for p in build(name, 100).parameters())
    assert abs(n / 1e6 - CRD_PARAMS_M[name]) <= 0.01, n


def test_required_names_are_registered() -> None:
    assert sorted(MODELS) == sorted(REQUIRED)


def test_unknown_name_lists_sorted_names() -> None:
    with pytest.raises(ValueError) as err:
        build("resnet9000", 10)
    msg = str(err.value)
    assert "'resnet9000'" in msg
    assert msg.split("allowed:")[1].strip().split(", ") == sorted(REQUIRED)


def _input_for(name: str) -> Tensor:
    if name.startswith("cnn_"):
        return torch.randn(3, 1, 8, 8)
    if name.startswith("tv_"):  # ImageNet nets downsample by 32
        return torch.randn(3, 3, 32, 32)
    # 16 px keeps the CIFAR zoo cheap (its exact 32 px shapes are checked above).
    return torch.randn(3, 3, 16, 16)


_HEAVY = {"resnet32x4", "ResNet50", "vgg13", "wrn_40_2", "ShuffleV1", "tv_resnet50"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in REQUIRED]
)
def test_output_contract(name: str) -> None:
    C = 5
    model = build(name, C).eval()
    x = _input_for(name)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (3, C)
    if name in EXPECTED_CHANNELS:
        assert [f.shape[1] for f in out.features] == EXPECTED_CHANNELS[name]
    assert len(out.features) >= 2
    sizes = [f.shape[-1] for f in out.features]
    assert sizes == sorted(sizes, reverse=True)  # shallow -> deep
    head = model.classifier()
    assert isinstance(head, nn.Linear) and head.out_features == C
    assert out.pooled.shape == (3, head.in_features)
    if name in EXPECTED_POOLED:
        assert head.in_features == EXPECTED_POOLED[name]
    else:  # pooled = global average of the last stage (ResNets, WRNs, small nets)
        assert head.in_features == out.features[-1].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(head(out.pooled), out.logits)
    # Training mode works on a small batch and gives gradients to the first layer.
    model.train()
    model(x).logits.sum().backward()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [8, 9, 12, 28])
def test_small_cnns_on_digit_sized_inputs(size: int) -> None:
    for name, lo, hi in (("cnn_small", 5_000, 20_000), ("cnn_large", 100_000, 300_000)):
        model = build(name, 10)  # native in_channels = 1
        assert lo <= sum(p.numel() for p in model.parameters()) <= hi
        out = model(torch.randn(4, 1, size, size))
        assert out.logits.shape == (4, 10)
        assert len(out.features) >= 2


def test_small_cnns_share_stage_resolutions() -> None:
    s = feature_shapes("cnn_small", 10, (1, 8, 8))
    t = feature_shapes("cnn_large", 10, (1, 8, 8))
    assert [x[1:] for x in s] == [x[1:] for x in t] == [(8, 8), (4, 4), (2, 2)]


def test_feature_shapes_match_reference_forward() -> None:
    x = torch.zeros(1, 3, 32, 32)
    _, (_, ref_feats, _) = _reference_checkpoint("resnet8x4", 100, x)
    assert feature_shapes("resnet8x4", 100, (3, 32, 32)) == [tuple(f.shape[1:]) for f in ref_feats]


def test_in_channels_for_first_conv() -> None:
    model = build("resnet8", 10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 10)
    assert build("cnn_small", 10, in_channels=3)(torch.randn(2, 3, 8, 8)).logits.shape == (2, 10)


def test_strict_load_rejects_wrong_head(tmp_path: Path) -> None:
    sd, _ = _reference_checkpoint("resnet8", 100, torch.zeros(1, 3, 32, 32))
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(RuntimeError):
        build("resnet8", 10, weights_path=str(path))


def test_load_state_file_strips_dataparallel_prefix(tmp_path: Path) -> None:
    sd, _ = _reference_checkpoint("resnet8", 10, torch.zeros(1, 3, 32, 32))
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert set(load_state_file(path)) == set(sd)


# --------------------------------------------------------------------------------------
# torchvision wrappers: torchvision itself is the independent reference
# --------------------------------------------------------------------------------------

TV = {
    "tv_resnet18": torchvision.models.resnet18,
    "tv_mobilenet_v2": torchvision.models.mobilenet_v2,
    "tv_resnet34": torchvision.models.resnet34,
    "tv_resnet50": torchvision.models.resnet50,
}


@pytest.mark.parametrize(
    "name",
    ["tv_resnet18", "tv_mobilenet_v2", pytest.param("tv_resnet34", marks=pytest.mark.slow),
     pytest.param("tv_resnet50", marks=pytest.mark.slow)],
)  # fmt: skip
def test_tv_wrapper_matches_torchvision(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = TV[name](weights=None, num_classes=1000).eval()
    # Non-trivial BN statistics so that a misplaced BN would show.
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "imagenet.pth"
    torch.save(ref.state_dict(), path)  # torchvision weight files are bare state dicts

    same = build(name, 1000, weights_path=str(path)).eval()
    assert {k: v.shape for k, v in same.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    x = torch.randn(2, 3, 32, 32)
    captured: list[Tensor] = []
    if name.startswith("tv_resnet"):
        taps = [ref.layer1, ref.layer2, ref.layer3, ref.layer4]
    else:
        taps = [ref.features[i] for i in (3, 6, 13, 17)]
    hooks = [t.register_forward_hook(lambda _m, _i, o: captured.append(o)) for t in taps]
    with torch.no_grad():
        want = ref(x)
        got = same(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got.logits, want)
    for g, w in zip(got.features, captured, strict=True):
        torch.testing.assert_close(g, w)

    # ImageNet weights into a 10-class model: backbone loaded, head kept fresh.
    fine = build(name, 10, weights_path=str(path))
    fine_sd, ref_sd = fine.state_dict(), ref.state_dict()
    assert fine.classifier().out_features == 10
    head = "fc" if name.startswith("tv_resnet") else "classifier.1"
    changed = {k for k in fine_sd if fine_sd[k].shape != ref_sd[k].shape}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    for k, v in fine_sd.items():
        if k not in changed:
            torch.testing.assert_close(v, ref_sd[k])
