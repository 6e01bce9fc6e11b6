"""Residual blocks of paper Table 2: basic (BB), bottleneck (BNB) and ResNeXt (XB).

Module names are part of the weight-inheritance contract and match torchvision's but for
the norm layers (``norm*`` rather than ``bn*``, since they may be GroupNorm) and the shortcut:

- ``conv1``, ``norm1``, ``conv2``, ``norm2`` (and ``conv3``, ``norm3`` for BNB/XB);
- ``shortcut.conv``, ``shortcut.norm`` when the shortcut projects (input and output channels
  differ), else a parameter-free ``shortcut`` that subsamples when the stride is 2.

Strides sit on the 3×3 conv (torchvision "v1.5"). Every block exposes ``last_norm``, the final
norm of its residual branch, which morphisms zero to make a new block an exact identity.
"""

from __future__ import annotations

import torch
from torch import nn

from spnas.arch import BlockSpec
from spnas.exceptions import ArchError
from spnas.modeling.norm import get_norm


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ProjectionShortcut(nn.Module):
    """1×1 conv + norm, with the block's stride: used when channels change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv = conv1x1(in_channels, out_channels, stride)
        self.norm = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class IdentityShortcut(nn.Module):
    """Identity, subsampled ``x[..., ::s, ::s]`` for stride ``s``.

    Parameter-free, so moving a stage boundary (swap) changes no tensor shape (docs/design.md §1).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        return x[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def make_shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Module:
    if in_channels != out_channels:
        return ProjectionShortcut(in_channels, out_channels, stride, norm)
    return IdentityShortcut(stride)


class ResidualBlock(nn.Module):
    """Base of the three block types: ``relu(branch(x) + shortcut(x))``."""

    expansion: int = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def last_norm(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3×3 convs of width ``n``; output ``n`` channels (BB)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, norm: str = "BN") -> None:
        super().__init__(in_channels, width, stride)
        self.conv1 = conv3x3(in_channels, width, stride)
        self.norm1 = get_norm(norm, width)
        self.conv2 = conv3x3(width, width)
        self.norm2 = get_norm(norm, width)
        self.shortcut = make_shortcut(in_channels, width, stride, norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(out))

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2


class Bottleneck(ResidualBlock):
    """1×1 reduce to ``inner``, 3×3 (grouped for XB), 1×1 expand to ``4n`` (BNB, XB)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        norm: str = "BN",
        inner: int | None = None,
        groups: int = 1,
    ) -> None:
        out_channels = width * self.expansion
        super().__init__(in_channels, out_channels, stride)
        inner = width if inner is None else inner
        self.conv1 = conv1x1(in_channels, inner)
        self.norm1 = get_norm(norm, inner)
        self.conv2 = conv3x3(inner, inner, stride, groups)
        self.norm2 = get_norm(norm, inner)
        self.conv3 = conv1x1(inner, out_channels)
        self.norm3 = get_norm(norm, out_channels)
        self.shortcut = make_shortcut(in_channels, out_channels, stride, norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = torch.relu(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out))

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3


class ResNeXtBlock(Bottleneck):
    """Bottleneck with a grouped 3×3 of inner width ``2n`` (XB; ``32×4d`` at ``n = 64``)."""

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, norm: str = "BN", groups: int = 32
    ) -> None:
        inner = 2 * width
        if inner % groups:
            raise ArchError(
                f"XB block of width {width} has inner width {inner}, not divisible by "
                f"{groups} groups; choose a base width with 2·width a multiple of the groups "
                "or fewer groups (xb_groups)"
            )
        super().__init__(in_channels, width, stride, norm, inner=inner, groups=groups)


def build_block(
    block_type: str, spec: BlockSpec, base_width: int, norm: str, xb_groups: int = 32
) -> ResidualBlock:
    """The block ``spec`` of a code of type ``block_type`` at a given base width."""
    in_channels = spec.in_mult * base_width
    width = spec.width_mult * base_width
    if block_type == "BB":
        return BasicBlock(in_channels, width, spec.stride, norm)
    if block_type == "BNB":
        return Bottleneck(in_channels, width, spec.stride, norm)
    if block_type == "XB":
        return ResNeXtBlock(in_channels, width, spec.stride, norm, groups=xb_groups)
    raise ArchError(f"unknown block type {block_type!r}, expected BB, BNB or XB")
