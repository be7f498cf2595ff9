"""Common base of every model in the zoo: the output contract and the classifier accessor.

Every model returns :class:`trainables.types.ModelOutputs` (ARCHITECTURE.md, "Model
contract") and exposes ``classifier()`` -> the final ``nn.Linear`` (used to build the
classifier-cosine cost matrix, methods.md "cost matrix").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from trainables.types import ModelOutputs


class ZooModel(nn.Module):
    """Base class: subclasses set ``head_path`` (dotted path of the final ``nn.Linear``).

    Two zoo families (VGG, MobileNetV2) name their head module ``classifier``, which is also
    the name of the accessor method below. The module is therefore registered directly in
    ``self._modules`` (so state-dict keys stay ``classifier.*`` as in the checkpoints) and is
    reached through :meth:`_child`, never through attribute access.
    """

    head_path: ClassVar[str] = "fc"

    def _set_child(self, name: str, module: nn.Module) -> None:
        """Register ``module`` under ``name`` even if a method of that name exists.

        ``add_module`` refuses names that shadow an attribute; writing ``_modules``
        directly gives the same registration (state dict, ``.to()``, ``.train()``) and
        leaves the ``classifier()`` method reachable.
        """
        self._modules[name] = module

    def _child(self, dotted: str) -> nn.Module:
        """Submodule by dotted path, looked up in ``_modules`` (not ``getattr``, see above)."""
        module: nn.Module = self
        for part in dotted.split("."):
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(self).__name__} has no submodule {dotted!r}")
            module = child
        return module

    def classifier(self) -> nn.Linear:
        """The final linear layer (its input is ``ModelOutputs.pooled``)."""
        head = self._child(self.head_path)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"{self.head_path!r} is {type(head).__name__}, not nn.Linear")
        return head

    def load_pretrained(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a state dict strictly (the CIFAR zoo checkpoints must match exactly).

        Subclasses that load weights trained on another label set (torchvision ImageNet
        weights) override this to re-initialise a mismatching head.
        """
        self.load_state_dict(state_dict, strict=True)

    def forward(self, x: Tensor) -> ModelOutputs:  # pragma: no cover - abstract
        raise NotImplementedError


def global_avg_pool(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, C]`` mean over space.

    The zoo uses fixed-size pools (``AvgPool2d(8)``, ``avg_pool2d(out, 4)``) that equal a
    global mean exactly at 32x32 input; the global mean keeps that result and also works for
    other input sizes (parameter-free, so checkpoints are unaffected).
    """
    return torch.flatten(x.mean(dim=(2, 3)), 1)


def conv_init_fan_out(model: nn.Module) -> None:
    """He-normal (fan-out) conv init, BN weight 1 / bias 0.

    The init used by the zoo's ResNets (mdistiller ``resnet.py``/``resnetv2.py``); the
    ``n = k*k*out_channels`` normal init of the WRN/VGG/MobileNet files is the same
    distribution (std = sqrt(2 / fan_out)), so one function serves every family.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
