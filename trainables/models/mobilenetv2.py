"""MobileNetV2 (Sandler et al. 2018) at width 0.5, the CRD/mdistiller CIFAR zoo's ``MobileNetV2``.

The zoo's ``MobileNetV2`` is its ``mobile_half`` = expansion T = 6, width multiplier 0.5.
Checkpoint names: ``conv1.{0,1}`` (stride-2 3x3 stem), ``blocks.{s}.{i}.conv.{0..7}``
(every block, including t = 1, has the pointwise expansion conv), ``conv2.{0,1}``
(1x1 to 1280 channels: the last width is not scaled for width <= 1) and
``classifier.0`` (``Sequential(Linear)``).
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs

# (expansion, channels, repeats, first stride) per stage, paper Table 2 with the CIFAR
# zoo's changes (stride 1 in the second stage); `T` replaces the paper's expansion 6.
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip


class InvertedResidual(nn.Module):
    """pw-expand (BN, ReLU) -> dw 3x3 (BN, ReLU) -> pw-linear (BN); residual if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV2(ZooModel):
    """Zoo MobileNetV2; features = [stem, blocks[1], blocks[2], blocks[4], blocks[6]] outputs.

    Same five tensors as mdistiller's ``feats["feats"]`` (channels 16, 12, 16, 48, 160 at
    width 0.5); ``pooled`` is the global average of ``conv2`` (1280-d).
    """

    head_path = "classifier.0"

    def __init__(
        self, num_classes: int, in_channels: int = 3, expansion: int = 6, width: float = 0.5
    ) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        stages = []
        for t, c, n, s in _SETTING:
            out = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, t or expansion))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self._set_child("classifier", nn.Sequential(nn.Linear(last, num_classes)))
        self.stage_channels = tuple(int(c * width) for c in (32, 24, 32, 96, 320))
        conv_init_fan_out(self)
        head = self.classifier()
        nn.init.normal_(head.weight, 0.0, 0.01)  # zoo init for the head
        nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> ModelOutputs:
        out = self.conv1(x)
        feats = [out]
        for i, stage in enumerate(self.blocks):
            out = stage(out)
            if i in (1, 2, 4, 6):  # the zoo's stage ends: output strides 2, 4, 8, 16
                feats.append(out)
        pooled = global_avg_pool(self.conv2(out))
        return ModelOutputs(self.classifier()(pooled), tuple(feats), pooled)
