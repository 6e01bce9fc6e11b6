"""Anchors and RoIAlign as detectron2 computes them, for detectors converted from it.

torchvision rounds its cell anchors to whole pixels and pools RoIs without half-pixel
alignment; detectron2 does neither. These subclasses make a torchvision Faster R-CNN compute
what a converted detectron2 detector computed (:mod:`spnas.engines.detectron2.to_torchvision`).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign, roi_align

# Scale inference and level mapping as MultiScaleRoIAlign's own (torchvision 0.29).
from torchvision.ops.poolers import _setup_scales

__all__ = ["AlignedMultiScaleRoIAlign", "UnroundedAnchorGenerator"]


class UnroundedAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator without its rounding of cell anchors to whole pixels.

    detectron2 keeps fractional anchors; at the 8–11 px anchors of small images, rounding moves
    anchor edges by up to half a pixel, enough to change which proposals a converted
    detectron2 RPN makes.
    """

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales_t[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales_t[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """Multi-scale RoIAlign with half-pixel alignment (``aligned=True``, detectron2's
    ``ROIAlignV2``), which torchvision's :class:`MultiScaleRoIAlign` does not expose.

    Without it, a head trained by detectron2 sees its RoI features shifted by half a feature
    pixel (2 image pixels at stride 4).
    """

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align(
                feature,
                rois[index],
                output_size=self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(result.dtype)
        return result
