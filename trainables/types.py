"""Small shared types: the model output contract and the epoch a schedule sees."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ModelOutputs:
    """What every model returns.

    logits:   ``[B, C]`` class scores.
    features: stage outputs, shallow -> deep (the zoo's feature list); feature
              losses index into it (``-1`` is the last stage).
    pooled:   ``[B, d]`` pooled penultimate features (input of the classifier).
    """

    logits: Tensor
    features: tuple[Tensor, ...]
    pooled: Tensor

    def detach(self) -> ModelOutputs:
        return ModelOutputs(
            self.logits.detach(),
            tuple(f.detach() for f in self.features),
            self.pooled.detach(),
        )


@dataclass(frozen=True)
class EpochInfo:
    """Where training is, as a pure schedule input.

    ``epoch`` is 1-based; ``num_epochs`` is the *planned* number of epochs, so a
    trial stopped early by a scheduler sees the same schedule as a full one
    (methods.md, notation).
    """

    epoch: int
    num_epochs: int

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {self.epoch}")

    @property
    def fraction(self) -> float:
        """x = e / E, the position used by every schedule (methods.md §6)."""
        return self.epoch / self.num_epochs
