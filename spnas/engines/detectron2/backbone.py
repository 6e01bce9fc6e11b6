"""SPNet as a detectron2 backbone, registered in ``BACKBONE_REGISTRY``.

- ``build_spnet_backbone``: the SPNet alone (stage outputs ``res2 …``).
- ``build_spnet_fpn_backbone``: SPNet + FPN with ``LastLevelMaxPool``, as detectron2's
  ``build_resnet_fpn_backbone``. Parameter names: ``backbone.bottom_up.<SPNet names>`` and
  ``backbone.fpn_lateral{N}`` / ``backbone.fpn_output{N}``.

Both read ``cfg.MODEL.SPNAS`` (see :mod:`spnas.engines.detectron2.config`).
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from spnas.arch import ParallelCode
from spnas.modeling import SPNet


class SPNetBackbone(SPNet, Backbone):
    """An :class:`~spnas.modeling.SPNet` that is a detectron2 :class:`Backbone`.

    Same module names and weights as :class:`~spnas.modeling.SPNet`; ``output_shape()``
    returns detectron2 :class:`ShapeSpec` objects.
    """

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=shape.channels, stride=shape.stride)
            for name, shape in super().output_shape().items()
        }

    @property
    def size_divisibility(self) -> int:
        return 0


@BACKBONE_REGISTRY.register()
def build_spnet_backbone(cfg, input_shape: ShapeSpec) -> SPNetBackbone:
    """The SPNet described by ``cfg.MODEL.SPNAS``."""
    spnas = cfg.MODEL.SPNAS
    backbone = SPNetBackbone(
        spnas.ARCH,
        ParallelCode(tuple(spnas.PARALLEL)) if len(spnas.PARALLEL) else None,
        base_width=spnas.BASE_WIDTH,
        stem=spnas.STEM,
        norm=spnas.NORM,
        out_features=list(spnas.OUT_FEATURES) or None,
        in_channels=input_shape.channels,
        xb_groups=spnas.XB_GROUPS,
    )
    if spnas.FREEZE_AT:
        backbone.freeze(spnas.FREEZE_AT)
    return backbone


@BACKBONE_REGISTRY.register()
def build_spnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """SPNet + FPN over ``cfg.MODEL.FPN.IN_FEATURES`` with a max-pooled extra level."""
    bottom_up = build_spnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    top_block = LastLevelMaxPool()
    # detectron2's LastLevelMaxPool pools "p5"; with 5–7 stages the coarsest level is deeper,
    # and pooling p5 would give the extra level p5's grid under a 2x coarser stride.
    stride = bottom_up.output_shape()[in_features[-1]].stride
    top_block.in_feature = f"p{stride.bit_length() - 1}"
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
