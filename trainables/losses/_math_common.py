"""Shared private helpers of the loss math (``math_*`` modules): argument checks,
dtype rules and the masked non-target softmaxes. Nothing public lives here.

Logit side (KD, DKD, WKD-L, GKL): ``[B, C]`` logits, teacher detached by the callers,
float64 in gives float64 out (:func:`_float_dtype`). Feature side (WKD-F, KD²M):
promoted dtype of the inputs, at least float32 (:func:`_result_dtype`).
"""

from __future__ import annotations

import torch
from torch import Tensor

# --------------------------------------------------------------------------- logits


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half/bfloat16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "logits must both be [B, C] with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def _target_mask(target: Tensor, num_classes: int) -> Tensor:
    """Boolean one-hot ``[B, C]`` of the labels."""
    return torch.nn.functional.one_hot(target.long(), num_classes).bool()


def _nontarget_log_softmax(scaled: Tensor, mask: Tensor) -> Tensor:
    """log of the renormalised non-target distribution, finite everywhere.

    ``scaled − logsumexp_{j≠y}(scaled)``: the entry at y is a finite, meaningless number
    (its probability is zeroed by the callers). This is the exact limit of the released
    code's ``softmax(z/T − 1000·onehot(y))`` (methods §2) without relying on exp(−1000)
    underflowing, and without −inf entries that would produce 0·∞ = NaN.
    """
    lse = torch.logsumexp(scaled.masked_fill(mask, float("-inf")), dim=1, keepdim=True)
    return scaled - lse


def _nontarget_softmax(scaled: Tensor, mask: Tensor) -> Tensor:
    """Non-target distribution p̃ with exactly zero mass at y (methods §3, step 2).

    softmax of −inf gives an exact 0 and its backward uses the output only, so the
    masked entry gets a zero (not NaN) gradient.
    """
    return torch.softmax(scaled.masked_fill(mask, float("-inf")), dim=1)


# --------------------------------------------------------------------------- features


def _result_dtype(*tensors: Tensor) -> torch.dtype:
    """Promoted floating dtype of the inputs (float32 at least)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"expected floating-point tensors, got {dtype}")
    # Half precision statistics are too coarse for variances / OT costs.
    return torch.promote_types(dtype, torch.float32)


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 instead of ``inf``.

    A channel that is constant over a cell / batch (dead ReLU) has variance 0; the
    plain ``sqrt`` backward would give ``inf * 0 = NaN``. The double ``where`` keeps
    the value exact and picks the zero subgradient there.
    """
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(x))
