"""Random weights that no identity hides behind, for tests and benchmarks of morphisms."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random convs and random norms (in place; returns ``model``).

    Conv weights are He-normal; every BatchNorm gets a scale of either sign in [0.4, 0.9], a
    shift, a running mean and a running variance in [1, 3]. At construction a norm is an
    identity (scale 1, shift 0, mean 0, variance 1) and fusion norms (``res*_u*``) are zero,
    so a forgotten tensor could go unnoticed; after this every one of them matters.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.weight.shape
            sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
            module.weight.copy_(torch.empty(shape).uniform_(0.4, 0.9, generator=g) * sign)
            module.bias.copy_(torch.randn(shape, generator=g) * 0.2)
            module.running_mean.copy_(torch.randn(shape, generator=g) * 0.2)
            module.running_var.copy_(torch.empty(shape).uniform_(1.0, 3.0, generator=g))
        elif isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            std = math.sqrt(2.0 / fan_in)
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
    return model
