"""Backbones described by architecture codes: blocks, stems, SerialNet, SPNet, cost.

Importing this package imports torch. Module names of the networks are the keys of weight
inheritance; :mod:`spnas.modeling.serialnet` and :mod:`spnas.modeling.spnet` document them.
"""

from __future__ import annotations

from spnas.modeling.blocks import BasicBlock, Bottleneck, ResidualBlock, ResNeXtBlock
from spnas.modeling.flops import CostReport, StageCost, cost, measure
from spnas.modeling.norm import get_norm, rescale_normalized_convs, zero_affine
from spnas.modeling.serialnet import (
    BACKBONE_KEY_PREFIXES,
    SerialNet,
    ShapeSpec,
    is_bare_backbone,
    split_backbone,
)
from spnas.modeling.spnet import SPNet, UpsampleFusion
from spnas.modeling.stems import DeepStem, ResNetStem
from spnas.modeling.torchvision_weights import load_torchvision_resnet, read_weights

__all__ = [
    "BACKBONE_KEY_PREFIXES",
    "BasicBlock",
    "Bottleneck",
    "CostReport",
    "DeepStem",
    "ResNeXtBlock",
    "ResNetStem",
    "ResidualBlock",
    "SPNet",
    "SerialNet",
    "ShapeSpec",
    "StageCost",
    "UpsampleFusion",
    "cost",
    "get_norm",
    "is_bare_backbone",
    "load_torchvision_resnet",
    "measure",
    "read_weights",
    "rescale_normalized_convs",
    "split_backbone",
    "zero_affine",
]
