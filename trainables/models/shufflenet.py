"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) as in the CRD/mdistiller CIFAR zoo.

CIFAR adaptations of the zoo: a 1x1 stem conv to 24 channels without max-pool, three
stages each starting with a stride-2 unit, global pooling of a 4x4 map at 32x32 input.

* ``ShuffleV1``: groups g = 3, stage widths 240/480/960, 4/8/4 units (paper Table 1, g = 3).
  Names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}``, ``linear``.
* ``ShuffleV2``: 1x, widths 116/232/464, 3/7/3 basic units after a down-sampling unit,
  ``conv2`` 1x1 to 1024 (paper Table 5). Names: ``conv1``, ``bn1``,
  ``layer{1,2,3}.0.{conv1..conv5,bn1..bn5}`` (down unit), ``layer{k}.{i>=1}.{conv1..3,bn1..3}``,
  ``conv2``, ``bn2``, ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.base import ZooModel, global_avg_pool
from trainables.types import ModelOutputs


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """``[N, g*c, H, W] -> [N, c*g, H, W]``: interleave the groups (ShuffleNet V1 §3.1)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Group-conv bottleneck; stride 2 concatenates an avg-pooled shortcut (V1 Fig. 2c).

    As in the zoo: the first pointwise conv is not grouped when its input is the 24-channel
    stem, the bottleneck width is ``out / 4``, and the ReLU follows the add/concat.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.g1 = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(ZooModel):
    """Zoo ShuffleV1; features = [stem, layer1, layer2, layer3] (post-ReLU), pooled 960-d."""

    head_path = "linear"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        repeats: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages = []
        prev = 24
        for width, n in zip(widths, repeats, strict=True):
            # The stride-2 unit concatenates its input, so its branch only adds width - prev.
            units = [ShuffleV1Unit(prev, width - prev, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            prev = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(prev, num_classes)
        self.stage_channels = (24, *widths)
        # No custom init: the zoo's ShuffleNets keep PyTorch's default initialisation.

    def forward(self, x: Tensor) -> ModelOutputs:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = global_avg_pool(f3)
        return ModelOutputs(self.linear(pooled), (f0, f1, f2, f3), pooled)


class ShuffleV2Basic(nn.Module):
    """Channel split; right half 1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU; concat; shuffle (V2 Fig 3c)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        keep, branch = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: left dw3x3-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    """Zoo ShuffleV2 (1x); features = [stem, layer1, layer2, layer3], pooled 1024-d."""

    head_path = "linear"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        repeats: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages = []
        prev = 24
        for width, n in zip(widths[:3], repeats, strict=True):
            stages.append(
                nn.Sequential(
                    ShuffleV2Down(prev, width), *[ShuffleV2Basic(width) for _ in range(n)]
                )
            )
            prev = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(prev, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)
        self.stage_channels = (24, *widths[:3])
        # No custom init: the zoo's ShuffleNets keep PyTorch's default initialisation.

    def forward(self, x: Tensor) -> ModelOutputs:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = global_avg_pool(F.relu(self.bn2(self.conv2(f3))))
        return ModelOutputs(self.linear(pooled), (f0, f1, f2, f3), pooled)


def ShuffleV1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1, g = 3 (CRD zoo ``ShuffleV1``)."""
    return ShuffleNetV1(num_classes, in_channels)


def ShuffleV2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1x (CRD zoo ``ShuffleV2``)."""
    return ShuffleNetV2(num_classes, in_channels)
