"""CIFAR ResNets (He et al. 2016, §4.2: 6n+2 layers, three stages) as in the CRD/mdistiller zoo.

Module names and shapes follow the widely shared CIFAR-100 teacher checkpoints
(``resnet56_vanilla/ckpt_epoch_240.pth`` ...; methods.md §9): ``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.{0,1}}``, ``fc``. Widths
``[16, 16, 32, 64]`` for resnet8..110 and ``[32, 64, 128, 256]`` for the "x4" variants
(the zoo's ``num_filters``; the first entry is the stem width).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add shortcut, ReLU (zoo order)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Projection shortcut (option B) whenever the shape changes, named `downsample`
        # as in the checkpoints.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(ZooModel):
    """ResNet-(6n+2) for 32x32 inputs; features = [stem, layer1, layer2, layer3] (post-ReLU).

    Same feature list as mdistiller's ``feats["feats"]``; ``pooled`` is the global average of
    ``layer3`` (the zoo's ``AvgPool2d(8)`` at 32x32).
    """

    head_path = "fc"

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stage_channels = widths
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        conv_init_fan_out(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> ModelOutputs:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = global_avg_pool(f3)
        return ModelOutputs(self.fc(pooled), (f0, f1, f2, f3), pooled)


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def resnet8(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet8: depth 8, widths 16/16/32/64 (CRD/mdistiller zoo)."""
    return CifarResNet(8, _SMALL, num_classes, in_channels)


def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet20: depth 20, widths 16/16/32/64 (He et al. 2016 CIFAR ResNet-20)."""
    return CifarResNet(20, _SMALL, num_classes, in_channels)


def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet32: depth 32, widths 16/16/32/64 (He et al. 2016 CIFAR ResNet-32)."""
    return CifarResNet(32, _SMALL, num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet56: depth 56, widths 16/16/32/64 (He et al. 2016 CIFAR ResNet-56)."""
    return CifarResNet(56, _SMALL, num_classes, in_channels)


def resnet110(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet110: depth 110, widths 16/16/32/64 (He et al. 2016 CIFAR ResNet-110)."""
    return CifarResNet(110, _SMALL, num_classes, in_channels)


def resnet8x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet8x4: depth 8, widths 32/64/128/256 (CRD zoo, 4x wider)."""
    return CifarResNet(8, _X4, num_classes, in_channels)


def resnet32x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """resnet32x4: depth 32, widths 32/64/128/256 (CRD zoo, 4x wider)."""
    return CifarResNet(32, _X4, num_classes, in_channels)
