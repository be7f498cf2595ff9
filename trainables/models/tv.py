"""ImageNet-style torchvision models wrapped to the zoo's output contract.

Used for the KD2M published setting (methods.md §8: ImageNet-pretrained torchvision
ResNet34 -> ResNet18 on 32x32 inputs, no resize). The wrapper adopts the torchvision
model's children under their own names, so ``state_dict`` keys are exactly torchvision's
and an official ``resnet18-*.pth`` file loads as is. Weights come only from a local file
(``build(..., weights_path=...)``); nothing is downloaded.

features: ResNets -> outputs of ``layer1..layer4`` (strides 4, 8, 16, 32);
MobileNetV2 -> outputs of ``features[3]``, ``[6]``, ``[13]``, ``[17]``, the last block of
each resolution at the same strides (24, 32, 96, 320 channels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torchvision
from torch import Tensor, nn

from trainables.models.base import ZooModel, global_avg_pool
from trainables.types import ModelOutputs


class _TorchvisionModel(ZooModel):
    """Shared weight loading: ImageNet files have a 1000-way head; keep ours if it differs."""

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load strictly, except that a head of another shape is skipped (fine-tuning).

        Loading ImageNet weights into a model for C != 1000 classes is the usual fine-tune
        start (methods.md §8: teacher fine-tuned from ImageNet weights): the backbone must
        match exactly, the classifier keeps its fresh initialisation.
        """
        own = self.state_dict()
        head_prefix = self.head_path + "."
        head_keys = {k for k in own if k.startswith(head_prefix)}
        state = dict(state_dict)
        if any(k in state and state[k].shape != own[k].shape for k in head_keys):
            state = {k: v for k, v in state.items() if k not in head_keys}
            missing, unexpected = self.load_state_dict(state, strict=False)
            if set(missing) != head_keys or unexpected:
                raise RuntimeError(
                    f"weights do not match {type(self).__name__} apart from the head: "
                    f"missing {sorted(set(missing) - head_keys)}, unexpected {unexpected}"
                )
        else:
            self.load_state_dict(state, strict=True)


class TVResNet(_TorchvisionModel):
    """torchvision ResNet (He et al. 2016, ImageNet stem: 7x7/2 conv + 3x3/2 max-pool)."""

    head_path = "fc"

    def __init__(
        self,
        arch: Callable[..., torchvision.models.ResNet],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        net = arch(weights=None, num_classes=num_classes)
        if in_channels != 3:
            # Same geometry as torchvision's stem; only the input channel count differs.
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        for name, child in net.named_children():
            setattr(self, name, child)
        bottleneck = isinstance(net.layer1[0], torchvision.models.resnet.Bottleneck)
        self.stage_channels = tuple(w * (4 if bottleneck else 1) for w in (64, 128, 256, 512))

    def forward(self, x: Tensor) -> ModelOutputs:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        pooled = global_avg_pool(f4)
        return ModelOutputs(self.fc(pooled), (f1, f2, f3, f4), pooled)


class TVMobileNetV2(_TorchvisionModel):
    """torchvision MobileNetV2 1.0 (Sandler et al. 2018); head = ``classifier.1``."""

    head_path = "classifier.1"
    stage_ends = (3, 6, 13, 17)

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
        if in_channels != 3:
            stem = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 2, 1, bias=False)
            nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
        self.features = net.features
        # `classifier` is also the accessor method's name: register through _set_child.
        self._set_child("classifier", net.classifier)
        self.stage_channels = tuple(self.features[i].out_channels for i in self.stage_ends)

    def forward(self, x: Tensor) -> ModelOutputs:
        feats = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                feats.append(x)
        pooled = global_avg_pool(x)
        # classifier = Dropout(0.2) + Linear: `pooled` is the Linear's input in eval mode.
        return ModelOutputs(self._child("classifier")(pooled), tuple(feats), pooled)


def tv_resnet18(num_classes: int, in_channels: int = 3) -> TVResNet:
    """torchvision ``resnet18`` (BasicBlock 2-2-2-2), stage channels 64/128/256/512."""
    return TVResNet(torchvision.models.resnet18, num_classes, in_channels)


def tv_resnet34(num_classes: int, in_channels: int = 3) -> TVResNet:
    """torchvision ``resnet34`` (BasicBlock 3-4-6-3), stage channels 64/128/256/512."""
    return TVResNet(torchvision.models.resnet34, num_classes, in_channels)


def tv_resnet50(num_classes: int, in_channels: int = 3) -> TVResNet:
    """torchvision ``resnet50`` (Bottleneck 3-4-6-3), stage channels 256/512/1024/2048."""
    return TVResNet(torchvision.models.resnet50, num_classes, in_channels)


def tv_mobilenet_v2(num_classes: int, in_channels: int = 3) -> TVMobileNetV2:
    """torchvision ``mobilenet_v2`` (width 1.0), stage channels 24/32/96/320."""
    return TVMobileNetV2(num_classes, in_channels)
