"""Small conv nets for the embedded default (8x8 grayscale digits, 10 classes).

Not from a paper: sized so that a CPU epoch over ~1300 images takes well under a second
(the embedded default must run anywhere). Both nets have three stages at the same
resolutions (H, H/2, H/4 -> 8, 4, 2 for digits) so that feature losses and cost matrices
can pair every student stage with the teacher stage of the same index; they differ in
width and depth only. Global average pooling makes them work for any input size >= 8.

* ``cnn_small`` (student): widths 16/32/32, one conv per stage, ~14.5k parameters at 10
  classes.
* ``cnn_large`` (teacher): widths 32/64/128, convs 1/2/1 per stage, ~131k parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs


def _conv_bn_relu(inp: int, oup: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU()]


class SmallCNN(ZooModel):
    """Stages of conv3x3-BN-ReLU; the first conv of stages 2.. has stride 2.

    features = the stage outputs (post-ReLU), pooled = global average of the last stage.
    """

    head_path = "fc"

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...],
        convs_per_stage: tuple[int, ...],
    ) -> None:
        super().__init__()
        if len(widths) != len(convs_per_stage) or len(widths) < 2:
            raise ValueError("need >= 2 stages and one conv count per stage")
        prev = in_channels
        stages = []
        for i, (width, n) in enumerate(zip(widths, convs_per_stage, strict=True)):
            layers = _conv_bn_relu(prev, width, 1 if i == 0 else 2)
            for _ in range(n - 1):
                layers += _conv_bn_relu(width, width, 1)
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(prev, num_classes)
        self.stage_channels = widths
        conv_init_fan_out(self)

    def forward(self, x: Tensor) -> ModelOutputs:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pooled = global_avg_pool(x)
        return ModelOutputs(self.fc(pooled), tuple(feats), pooled)


def cnn_small(num_classes: int, in_channels: int = 1) -> SmallCNN:
    """Student for the digits default: widths 16/32/32, 1 conv per stage (this module)."""
    return SmallCNN(num_classes, in_channels, (16, 32, 32), (1, 1, 1))


def cnn_large(num_classes: int, in_channels: int = 1) -> SmallCNN:
    """Teacher for the digits default: widths 32/64/128, convs 1/2/1 (this module)."""
    return SmallCNN(num_classes, in_channels, (32, 64, 128), (1, 2, 1))
