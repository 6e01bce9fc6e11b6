"""Normalisation layers by name: ``BN``, ``FrozenBN``, ``GN``, ``SyncBN``."""

from __future__ import annotations

import math

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from spnas.exceptions import ConfigError

NORMS: tuple[str, ...] = ("BN", "SyncBN", "FrozenBN", "GN")

#: Preferred GroupNorm group count (Wu & He); narrow demo widths fall back to a divisor.
GN_GROUPS = 32


def get_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer over ``channels`` channels.

    Args:
        norm: ``"BN"`` (batch norm), ``"SyncBN"`` (synchronised across processes),
            ``"FrozenBN"`` (fixed affine statistics, as detectron2 uses for pretrained
            backbones) or ``"GN"`` (group norm with 32 groups, or the largest divisor of
            ``channels`` below 32 for narrow networks).
        channels: number of channels.

    Raises:
        ConfigError: for an unknown name.
    """
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(GN_GROUPS, channels), channels)
    raise ConfigError(f"unknown norm {norm!r}, expected one of {', '.join(NORMS)}")


def zero_affine(norm: nn.Module) -> None:
    """Set a norm layer's affine scale and shift to zero, so that it outputs exactly 0.

    Used wherever a new branch must not change the network's function at insertion: in
    train and eval mode alike, ``0 · x̂ + 0 = 0``.
    """
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if weight is None or bias is None:
        raise ConfigError(f"{type(norm).__name__} has no affine parameters to zero")
    weight.data.zero_()
    bias.data.zero_()
