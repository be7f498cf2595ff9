"""VGG with batch norm (Simonyan & Zisserman 2015) as in the CRD/mdistiller CIFAR zoo.

The zoo's ``vgg8``/``vgg13`` are its ``vgg8_bn``/``vgg13_bn`` (mdistiller
``cifar_model_dict``): five conv blocks ``block0..block4`` (``Sequential`` of
conv(bias)-BN-ReLU, the final ReLU dropped so the block ends at BN), max-pools between
blocks, global average pool, ``classifier = Linear(512, C)``. Configurations: "S" (vgg8,
one conv per block) and "B" (vgg13, two), from the zoo's ``cfg`` table.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.base import ZooModel, conv_init_fan_out, global_avg_pool
from trainables.types import ModelOutputs

_CFG_S = ((64,), (128,), (256,), (512,), (512,))
_CFG_B = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


def _block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU repeated, without the final ReLU (zoo ``_make_layers``)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    # The trailing ReLU is applied in forward, so the block output is the pre-activation
    # (keeps the Sequential indices of the checkpoints: conv 0, bn 1, relu 2, conv 3, ...).
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """VGG-BN; features = the five post-ReLU block outputs (zoo ``feats``), pooled = 512-d.

    Between blocks: max-pool after block0..block2; the pool after block3 is only used for
    inputs of 64 px or more (the zoo applies it at exactly 64, its Tiny-ImageNet setting),
    so at 32x32 block3 and block4 both run at 4x4.
    """

    head_path = "classifier"

    def __init__(
        self, cfg: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        prev = in_channels
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(widths, prev))
            prev = widths[-1]
        self.stage_channels = tuple(w[-1] for w in cfg)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self._set_child("classifier", nn.Linear(prev, num_classes))
        conv_init_fan_out(self)
        head = self.classifier()
        nn.init.normal_(head.weight, 0.0, 0.01)  # zoo init for the VGG head
        nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> ModelOutputs:
        big_input = x.shape[-2] >= 64
        f0 = F.relu(self.block0(x))
        f1 = F.relu(self.block1(self.pool(f0)))
        f2 = F.relu(self.block2(self.pool(f1)))
        f3 = F.relu(self.block3(self.pool(f2)))
        f4 = F.relu(self.block4(self.pool(f3) if big_input else f3))
        pooled = global_avg_pool(f4)
        return ModelOutputs(self.classifier()(pooled), (f0, f1, f2, f3, f4), pooled)


def vgg8(num_classes: int, in_channels: int = 3) -> VGG:
    """vgg8 = the zoo's ``vgg8_bn`` (configuration "S")."""
    return VGG(_CFG_S, num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int = 3) -> VGG:
    """vgg13 = the zoo's ``vgg13_bn`` (configuration "B", VGG-13)."""
    return VGG(_CFG_B, num_classes, in_channels)
