"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016) as in the CRD/mdistiller zoo.

Pre-activation blocks; module names as in the checkpoints: ``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``.
Widths ``[16, 16k, 32k, 64k]``, ``n = (d - 4) / 6`` blocks per stage (paper §2; zoo
``wrn.py``). Dropout is 0 in every zoo model and is left out.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs


class WideBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with identity or 1x1 projection shortcut.

    As in the zoo: when the shape changes, the shortcut takes the *activated* input
    ``relu(bn1(x))``; otherwise it takes the raw input ``x``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        # The zoo ties the projection to a channel change only (stride-2 blocks always
        # change channels there); the name `convShortcut` is the checkpoints'.
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        out = self.conv2(out)
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(act) + out


class NetworkBlock(nn.Module):
    """One stage: ``layer`` = Sequential of blocks (extra level kept for checkpoint keys)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """WRN-depth-widen; features = [conv1, block1, block2, block3] outputs (zoo ``feats``).

    The block outputs are pre-activation tensors (the network is pre-activation); ``pooled``
    is the global average of ``relu(bn1(block3))`` as in the zoo.
    """

    head_path = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stage_channels = ch
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        conv_init_fan_out(self)
        nn.init.zeros_(self.fc.bias)  # zoo init: Linear bias zero, weight default

    def forward(self, x: Tensor) -> ModelOutputs:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = global_avg_pool(F.relu(self.bn1(f3)))
        return ModelOutputs(self.fc(pooled), (f0, f1, f2, f3), pooled)


def wrn_16_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (CRD zoo student)."""
    return WideResNet(16, 2, num_classes, in_channels)


def wrn_40_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (CRD zoo student)."""
    return WideResNet(40, 1, num_classes, in_channels)


def wrn_40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (CRD zoo teacher)."""
    return WideResNet(40, 2, num_classes, in_channels)
