"""Normalisation layers by name: ``BN``, ``FrozenBN``, ``GN``, ``SyncBN``."""

from __future__ import annotations

import math

import torch
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


def init_weight_rms(conv: nn.Conv2d) -> float:
    """The RMS of a freshly initialised ``conv`` weight (PyTorch's default,
    ``kaiming_uniform_(a=√5)``: uniform on ±1/√fan_in)."""
    fan_in = conv.weight[0].numel()
    return 1.0 / math.sqrt(3 * fan_in)


@torch.no_grad()
def rescale_normalized_convs(module: nn.Module) -> int:
    """Scale every convolution that a norm layer follows back to the RMS of a fresh
    initialisation, without changing what ``module`` computes (up to the norms' eps: relative
    differences below 1e-3).

    Training with SGD grows the weights of a convolution followed by a norm layer (the norm
    makes the function blind to their scale, weight decay pulls back only slowly); the next
    training's effective learning rate on them falls as 1/‖w‖². Crop pretraining
    (reignition) at lr 0.1 grew them 1.6–11×, part of what left detectors trained from it
    below ones trained from random weights (``benchmarks/profiles.py --init``). The norm
    undoes the scale: batch norm (``BN``, ``SyncBN``) per output channel, in train mode
    exactly, in eval mode with its running mean and variance scaled alike (as ``FrozenBN``'s
    statistics); group norm needs one factor for a whole group, so it gets one for the layer.

    Pairs are the children named ``conv<suffix>`` and ``norm<suffix>`` of one module (the
    blocks, stems and shortcuts of :mod:`spnas.modeling`). Channels whose weights are all zero
    are left as they are.

    Returns:
        The number of convolutions rescaled.
    """
    rescaled = 0
    for conv, norm in _conv_norm_pairs(module):
        weight = conv.weight
        if isinstance(norm, nn.GroupNorm):
            rms = weight.pow(2).mean().sqrt().expand(weight.shape[0])
        else:
            rms = weight.flatten(1).pow(2).mean(1).sqrt()
        scale = torch.where(rms > 0, init_weight_rms(conv) / rms, torch.ones_like(rms))
        weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.mul_(scale)
            norm.running_var.mul_(scale.square())
        rescaled += 1
    return rescaled


_SCALE_FREE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d, nn.GroupNorm)


def _conv_norm_pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.Module]]:
    """The convolutions of ``module`` that a sibling norm layer ``norm<suffix>`` follows."""
    pairs = []
    for parent in module.modules():
        for name, conv in parent.named_children():
            if not (name.startswith("conv") and isinstance(conv, nn.Conv2d)):
                continue
            norm = getattr(parent, "norm" + name[len("conv") :], None)
            if isinstance(norm, _SCALE_FREE_NORMS):
                pairs.append((conv, norm))
    return pairs
