"""WKD-F projectors: map a student feature map onto the teacher's shape (methods.md §4).

The projector's parameters are trained with the student; it lives inside the loss
module so the optimizer and ``state_dict()`` pick it up. Both projectors end in
BatchNorm + ReLU, as published (the teacher's last-stage maps are post-ReLU).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

Shape = Sequence[int]


def _chw(shape: Shape, who: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from a ``(B, C, H, W)`` or ``(C, H, W)`` shape (``torch.Size`` works)."""
    dims = tuple(int(s) for s in shape)
    if len(dims) == 4:
        dims = dims[1:]
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{who} shape must be (B, C, H, W) or (C, H, W), got {tuple(shape)}")
    return dims[0], dims[1], dims[2]


def _no_fit(student_shape: Shape, teacher_shape: Shape, kind: str) -> ValueError:
    return ValueError(
        f"no {kind} projector maps student shape {tuple(student_shape)} to teacher shape "
        f"{tuple(teacher_shape)}: supported are equal spatial size, student = 2x teacher, "
        "teacher = 2x student, or (convreg) a student larger in both H and W"
    )


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _resize_conv(
    c_in: int, c_out: int, s_hw: tuple[int, int], t_hw: tuple[int, int], allow_valid: bool
) -> nn.Module | None:
    """The spatial layer of mdistiller's ``ConvReg`` for ``s_hw -> t_hw``, or ``None``.

    Order as in mdistiller (CRD's ``ConvReg``): stride-2 3×3 conv when the student is
    twice as large, 4×4 stride-2 transposed conv when half as large, else (if
    ``allow_valid``) a "valid" conv with kernel ``1 + s − t`` (1×1 when equal). The
    output size is checked in both H and W (a candidate that does not fit falls
    through to the next), so non-square mismatches are refused here instead of
    failing at the first forward pass.
    """
    (sh, sw), (th, tw) = s_hw, t_hw
    if sh == 2 * th and (_conv_out(sh, 3, 2, 1), _conv_out(sw, 3, 2, 1)) == (th, tw):
        return nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)
    # Transposed conv output: (s − 1)·2 − 2·1 + 4 = 2s.
    if 2 * sh == th and (2 * sh, 2 * sw) == (th, tw):
        return nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
    if allow_valid and sh >= th and sw >= tw:
        return nn.Conv2d(c_in, c_out, kernel_size=(1 + sh - th, 1 + sw - tw))
    if sh == th and sw == tw:
        return nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)
    return None


class ConvReg(nn.Module):
    """Published WKD-F / CRD projector "ConvReg": one conv, then BatchNorm2d + ReLU.

    methods.md §4; reference: mdistiller's ``ConvReg`` (used by WKD's CIFAR configs):
    ``Conv2d(s_C, t_C, 3, stride=2, padding=1)`` when ``s_H == 2·t_H``;
    ``ConvTranspose2d(s_C, t_C, 4, stride=2, padding=1)`` when ``2·s_H == t_H``;
    ``Conv2d(s_C, t_C, kernel_size=(1 + s_H − t_H, 1 + s_W − t_W))`` when
    ``s_H >= t_H`` (a 1×1 conv for equal sizes). Conv biases are kept (as published)
    so parameter names and counts match the reference.

    Args:
        student_shape: ``(B, C, H, W)`` or ``(C, H, W)`` of the student map.
        teacher_shape: same for the teacher map.
        use_relu: final ReLU (published: ``True``).

    Raises:
        ValueError: naming both shapes when no conv of these kinds fits.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape, use_relu: bool = True) -> None:
        super().__init__()
        s_c, s_h, s_w = _chw(student_shape, "student")
        t_c, t_h, t_w = _chw(teacher_shape, "teacher")
        conv = _resize_conv(s_c, t_c, (s_h, s_w), (t_h, t_w), allow_valid=True)
        if conv is None:
            raise _no_fit(student_shape, teacher_shape, "convreg")
        self.conv = conv
        self.bn = nn.BatchNorm2d(t_c)
        self.relu: nn.Module = nn.ReLU() if use_relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """ImageNet WKD-F projector: 1×1 → 3×3 → 1×1 convs (hidden 256), BatchNorm2d + ReLU.

    methods.md §4 ("for ImageNet a 1×1→3×3→1×1 bottleneck (hidden 256)"); reference:
    WKD's ``ConvRegBottleNeck(c_hidden=256)``, which has *no* normalisation or
    activation between the three convs (only the final BN + ReLU) — kept as
    published. The middle 3×3 conv changes the resolution when needed: stride 1
    (equal sizes, the published R34→R18 and R50→MV1 cases), stride 2 (student twice
    as large) or a 4×4 stride-2 transposed conv (student half as large; the released
    code's version of this branch cannot run, so this one is ours).

    Args:
        student_shape, teacher_shape: ``(B, C, H, W)`` or ``(C, H, W)``.
        hidden: bottleneck width (published 256).
        use_relu: final ReLU (published ``True``).

    Raises:
        ValueError: naming both shapes when the sizes are not equal or a factor 2 apart.
    """

    def __init__(
        self,
        student_shape: Shape,
        teacher_shape: Shape,
        hidden: int = 256,
        use_relu: bool = True,
    ) -> None:
        super().__init__()
        s_c, s_h, s_w = _chw(student_shape, "student")
        t_c, t_h, t_w = _chw(teacher_shape, "teacher")
        middle = _resize_conv(hidden, hidden, (s_h, s_w), (t_h, t_w), allow_valid=False)
        if middle is None:
            raise _no_fit(student_shape, teacher_shape, "bottleneck")
        self.conv1 = nn.Conv2d(s_c, hidden, kernel_size=1)
        self.conv2 = middle
        self.conv3 = nn.Conv2d(hidden, t_c, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.relu: nn.Module = nn.ReLU() if use_relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv3(self.conv2(self.conv1(x)))))


def build_projector(student_shape: Shape, teacher_shape: Shape, kind: str = "convreg") -> nn.Module:
    """Projector for WKD-F from the student's to the teacher's feature shape (§4).

    Args:
        student_shape, teacher_shape: ``(B, C, H, W)`` or ``(C, H, W)``.
        kind: ``"convreg"`` (CIFAR, published default) or ``"bottleneck"`` (ImageNet).

    Raises:
        ValueError: unknown ``kind``, or no projector of that kind fits the shapes
            (the message names both shapes).
    """
    if kind == "convreg":
        return ConvReg(student_shape, teacher_shape)
    if kind == "bottleneck":
        return Bottleneck(student_shape, teacher_shape)
    raise ValueError(f"unknown projector kind {kind!r}; expected 'convreg' or 'bottleneck'")
