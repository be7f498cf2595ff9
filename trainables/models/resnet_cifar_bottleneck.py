"""CIFAR ResNet-50 (He et al. 2016 bottleneck, 3-4-6-3), the CRD/mdistiller zoo's ``ResNet50``.

CIFAR adaptation from the zoo's ``resnetv2.py``: a 3x3 stride-1 stem (64 channels) and no
max-pool, four stages of widths 64/128/256/512 (x4 expansion), adaptive average pool.
Checkpoint names: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,
shortcut.{0,1}}``, ``linear``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1(x4)-BN, add shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        # Always a Sequential, named `shortcut` as in the checkpoints (empty = identity).
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetBottleneck(ZooModel):
    """Zoo ResNet50; features = [stem, layer1..layer4] (post-ReLU), pooled 2048-d."""

    head_path = "linear"

    def __init__(
        self, num_blocks: tuple[int, int, int, int], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        prev = 64
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True):
            blocks = [Bottleneck(prev, planes, stride)]
            prev = planes * Bottleneck.expansion
            blocks += [Bottleneck(prev, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(prev, num_classes)
        self.stage_channels = (64, 256, 512, 1024, 2048)
        conv_init_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutputs:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        pooled = global_avg_pool(f4)
        return ModelOutputs(self.linear(pooled), (f0, f1, f2, f3, f4), pooled)


def ResNet50(num_classes: int, in_channels: int = 3) -> CifarResNetBottleneck:
    """CIFAR ResNet-50 (CRD zoo ``ResNet50``, blocks 3-4-6-3)."""
    return CifarResNetBottleneck((3, 4, 6, 3), num_classes, in_channels)
