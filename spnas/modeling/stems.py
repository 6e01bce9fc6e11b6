"""Stems: image → stride 4 with ``base_width`` channels (docs/design.md §1)."""

from __future__ import annotations

import torch
from torch import nn

from spnas.exceptions import ConfigError
from spnas.modeling.norm import get_norm

STEMS: tuple[str, ...] = ("resnet", "deep")


class ResNetStem(nn.Module):
    """7×7/2 conv, norm, ReLU, 3×3/2 max-pool, as torchvision's ResNet.

    Parameters: ``conv1``, ``norm1``.
    """

    stride = 4

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        self.norm1 = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepStem(nn.Module):
    """Two 3×3/2 convs with norm and ReLU (paper §3.1): cheaper than 7×7 + pool.

    Parameters: ``conv1``, ``norm1`` (``out_channels // 2`` channels), ``conv2``, ``norm2``.
    """

    stride = 4

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN") -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride=2, padding=1, bias=False)
        self.norm1 = get_norm(norm, mid)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm2 = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(x)))


def build_stem(stem: str, in_channels: int, out_channels: int, norm: str) -> nn.Module:
    if stem == "resnet":
        return ResNetStem(in_channels, out_channels, norm)
    if stem == "deep":
        return DeepStem(in_channels, out_channels, norm)
    raise ConfigError(f"unknown stem {stem!r}, expected one of {', '.join(STEMS)}")
