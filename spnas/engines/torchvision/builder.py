"""Building a torchvision Faster R-CNN from its :class:`~.layout.FasterRCNNLayout`."""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from spnas.data.normalization import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from spnas.engines._roi import CANONICAL_LEVEL
from spnas.engines.torchvision.fpn import SPNetFPN
from spnas.engines.torchvision.geometry import AlignedMultiScaleRoIAlign, UnroundedAnchorGenerator
from spnas.engines.torchvision.layout import FasterRCNNLayout
from spnas.modeling.spnet import SPNet

__all__ = ["build_faster_rcnn"]


def build_faster_rcnn(layout: FasterRCNNLayout) -> FasterRCNN:
    """A torchvision Faster R-CNN with random weights, as ``layout`` describes."""
    spec = layout.spec
    body = SPNet(
        spec.arch,
        spec.parallel,
        base_width=spec.base_width,
        stem=spec.stem,
        norm=spec.norm,
        xb_groups=spec.xb_groups,
    )
    backbone = SPNetFPN(body, spec.fpn_channels)
    levels = len(layout.anchor_sizes)
    d2 = layout.detectron2_geometry
    anchor_generator = (UnroundedAnchorGenerator if d2 else AnchorGenerator)(
        sizes=layout.anchor_sizes, aspect_ratios=(layout.aspect_ratios,) * levels
    )
    roi_pool = (AlignedMultiScaleRoIAlign if d2 else MultiScaleRoIAlign)(
        featmap_names=list(backbone.stage_names),
        output_size=7,
        sampling_ratio=layout.sampling_ratio,
        canonical_scale=layout.canonical_box_size,
        canonical_level=CANONICAL_LEVEL,
    )
    height, width = roi_pool.output_size
    return FasterRCNN(
        backbone,
        num_classes=None,  # the predictor fixes it: spec.num_classes + background
        min_size=layout.min_size,
        max_size=layout.max_size,
        image_mean=[m / 255.0 for m in PIXEL_MEAN_RGB],
        image_std=[s / 255.0 for s in PIXEL_STD_RGB],
        size_divisible=layout.size_divisible,
        rpn_anchor_generator=anchor_generator,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(spec.fpn_channels * height * width, layout.representation_size),
        box_predictor=FastRCNNPredictor(layout.representation_size, spec.num_classes + 1),
        **layout.options,
    )
