"""The backbone torchvision's detectors take: an SPNet whose every stage feeds an FPN."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from spnas.modeling.spnet import SPNet

__all__ = ["SPNetFPN"]


class SPNetFPN(nn.Module):
    """An SPNet followed by an FPN: the ``backbone`` torchvision's detectors expect.

    Args:
        body: the SPNet (or SerialNet) backbone; every stage feeds the FPN.
        out_channels: channels of every FPN level.

    ``forward`` returns an ordered dict ``{res2: …, …, res{S+1}: …, pool: …}`` of
    ``out_channels``-channel maps, finest first.
    """

    def __init__(self, body: SPNet, out_channels: int) -> None:
        super().__init__()
        shapes = body.output_shape()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shapes[name].channels for name in body.out_features],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = out_channels
        self.stage_names: tuple[str, ...] = tuple(body.out_features)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        # The FPN's top-down pass runs in dict order, so order finest → coarsest explicitly.
        return self.fpn(OrderedDict((name, features[name]) for name in self.stage_names))
