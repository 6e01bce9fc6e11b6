"""SerialNet: the backbone a :class:`~spnas.arch.SerialCode` describes.

Module names (the keys of weight inheritance; stable across versions)::

    stem.conv1, stem.norm1 [, stem.conv2, stem.norm2]     (stems.py)
    res{i+2}.{j}.<block parameters>                      block j of stage i (blocks.py)

``forward`` returns one feature map per stage in ``out_features``: ``res{i+2}`` at stride
``4 · 2^i`` with ``code.stage_channels(base_width)[i]`` channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spnas.arch import SerialCode
from spnas.exceptions import ConfigError, WeightsError
from spnas.modeling.blocks import build_block
from spnas.modeling.norm import NORMS
from spnas.modeling.stems import build_stem

#: Key prefixes of a SerialNet's (and an SPNet's) own state dict: the stem and the stages.
BACKBONE_KEY_PREFIXES: tuple[str, ...] = ("stem.", "res")

#: The key that marks where a backbone sits inside a detector's state dict.
_STEM_KEY = "stem.conv1.weight"


def is_bare_backbone(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a backbone's own state dict (e.g. ``spnas pretrain``'s output):
    not empty, and every key a stem or stage key with no detector prefix."""
    return bool(state) and all(key.startswith(BACKBONE_KEY_PREFIXES) for key in state)


def split_backbone(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The prefix under which a detector's ``state`` holds its SerialNet/SPNet (``""`` for a
    bare backbone), and that backbone's own state dict.

    Raises:
        WeightsError: when ``state`` holds no backbone.
    """
    prefix = next((k.removesuffix(_STEM_KEY) for k in state if k.endswith(_STEM_KEY)), None)
    if prefix is None:
        raise WeightsError(f"the weights hold no SPNet backbone (no '…{_STEM_KEY}' key)")
    backbone = {
        key.removeprefix(prefix): value
        for key, value in state.items()
        if key.startswith(prefix) and key.removeprefix(prefix).startswith(BACKBONE_KEY_PREFIXES)
    }
    return prefix, backbone


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride of one output feature map (detectron2's contract, torch-only)."""

    channels: int
    stride: int


class SerialNet(nn.Module):
    """A serial backbone built from a code.

    Args:
        code: the architecture, e.g. ``"BNB(111,d111,d11111,d11)"`` (ResNet-50).
        base_width: stem output channels and the width ``n`` of the first blocks (64 in the
            paper; 16–32 for CPU demos).
        stem: ``"resnet"`` (7×7 conv + max-pool) or ``"deep"`` (two 3×3/2 convs).
        norm: ``"BN"``, ``"SyncBN"``, ``"FrozenBN"`` or ``"GN"``.
        out_features: stage names to return; all stages by default.
        in_channels: image channels.
        xb_groups: groups of the XB blocks' 3×3 conv (32 in the paper).
    """

    def __init__(
        self,
        code: SerialCode | str,
        base_width: int = 64,
        stem: str = "resnet",
        norm: str = "BN",
        out_features: Sequence[str] | None = None,
        in_channels: int = 3,
        xb_groups: int = 32,
    ) -> None:
        super().__init__()
        code = SerialCode.parse(code)
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}, expected one of {', '.join(NORMS)}")
        if base_width < 1:
            raise ConfigError(f"base_width={base_width!r}: expected a positive integer")
        self.code = code
        self.base_width = base_width
        self.stem_name = stem
        self.norm = norm
        self.xb_groups = xb_groups
        self.in_channels = in_channels
        self.stem = build_stem(stem, in_channels, base_width, norm)
        stages: list[list[nn.Module]] = [[] for _ in code.stages]
        for spec in code.blocks():
            stages[spec.stage].append(build_block(code.block, spec, base_width, norm, xb_groups))
        for name, blocks in zip(code.stage_names, stages, strict=True):
            self.add_module(name, nn.Sequential(*blocks))
        self.stage_names: tuple[str, ...] = code.stage_names
        if out_features is None:
            out_features = self.stage_names
        unknown = [f for f in out_features if f not in self.stage_names]
        if unknown:
            raise ConfigError(
                f"out_features has {unknown[0]!r}, expected some of {', '.join(self.stage_names)}"
            )
        self.out_features: tuple[str, ...] = tuple(out_features)
        self._shapes = {
            name: ShapeSpec(channels, stride)
            for name, channels, stride in zip(
                self.stage_names,
                code.stage_channels(base_width),
                code.stage_strides(),
                strict=True,
            )
        }

    def stage(self, name: str) -> nn.Sequential:
        """The stage module ``res{i+2}``."""
        return getattr(self, name)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every returned feature map."""
        return {name: self._shapes[name] for name in self.out_features}

    def _run_stage(self, index: int, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.stage(name)(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects NCHW input, got shape {tuple(x.shape)}"
            )
        outputs: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        # The deepest requested stage, whatever order out_features lists them in.
        last = max(self.out_features, key=self.stage_names.index, default=None)
        for index, name in enumerate(self.stage_names):
            x = self._run_stage(index, name, x)
            if name in self.out_features:
                outputs[name] = x
            if name == last:
                break
        return outputs

    def freeze(self, freeze_at: int) -> SerialNet:
        """Freeze the stem (``freeze_at ≥ 1``) and the first ``freeze_at - 1`` stages.

        Frozen parameters get ``requires_grad = False`` (detectron2's ``FREEZE_AT``).
        """
        modules: list[nn.Module] = [self.stem] if freeze_at >= 1 else []
        modules += [self.stage(n) for n in self.stage_names[: max(freeze_at - 1, 0)]]
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        return self

    def extra_repr(self) -> str:
        return f"code={self.code}, base_width={self.base_width}, stem={self.stem_name}"
