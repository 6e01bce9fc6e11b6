"""Converting a detectron2 Faster R-CNN over an SPNet into torchvision's ``FasterRCNN``.

The two libraries implement the same detector with different names and layouts:

====================================  =====================================================
detectron2                            torchvision (:mod:`spnas.engines.torchvision`)
====================================  =====================================================
``backbone.bottom_up.*``              ``backbone.body.*`` (the SPNet, same names)
``backbone.fpn_lateral{k}``           ``backbone.fpn.inner_blocks.{i}.0`` (stage ``i``)
``backbone.fpn_output{k}``            ``backbone.fpn.layer_blocks.{i}.0``
``proposal_generator.rpn_head.conv``  ``rpn.head.conv.0.0``
``…objectness_logits``                ``rpn.head.cls_logits``, anchors re-ordered
``…anchor_deltas``                    ``rpn.head.bbox_pred``, anchors re-ordered
``roi_heads.box_head.fc1`` / ``fc2``  ``roi_heads.box_head.fc6`` / ``fc7``
``roi_heads.box_predictor.*``         same names, background class moved first
====================================  =====================================================

Two differences need more than renaming:

- **Anchor order.** At each location detectron2 enumerates anchors size-major (for each size,
  every aspect ratio), torchvision ratio-major; the RPN's per-anchor output channels are
  permuted accordingly.
- **Classes.** detectron2's classifier puts background last (index K), torchvision's first
  (index 0); detectron2 regresses K class-specific boxes, torchvision K + 1 (a background
  slot, never used at inference, filled with zeros).

The converted layout also keeps detectron2's geometry (``detectron2_geometry``): anchors
not rounded to whole pixels, and RoIAlign with half-pixel alignment (``ROIAlignV2``). With
torchvision's own, a detector trained on 128 px images lost a third of its AP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from detectron2.config import CfgNode

from spnas.arch import ParallelCode
from spnas.data.normalization import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from spnas.engines._types import ModelSpec
from spnas.engines.detectron2.roi_heads import pooler_canonical_box_size
from spnas.engines.torchvision import FasterRCNNLayout
from spnas.exceptions import ConfigError, WeightsError

#: Config values a torchvision ``FasterRCNN`` cannot express, with the one it needs (or, for
#: names, the ones it can express).
_REQUIRED: tuple[tuple[str, object], ...] = (
    ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN"),
    ("MODEL.BACKBONE.NAME", "build_spnet_fpn_backbone"),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN"),
    ("MODEL.RPN.HEAD_NAME", "StandardRPNHead"),
    ("MODEL.ROI_HEADS.NAME", ("StandardROIHeads", "InputScaledROIHeads")),
    ("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead"),
    ("MODEL.ROI_BOX_HEAD.NUM_CONV", 0),
    ("MODEL.ROI_BOX_HEAD.NUM_FC", 2),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7),
    ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2"),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0, 5.0)),
    ("MODEL.RPN.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0)),
    ("MODEL.FPN.NORM", ""),
    ("MODEL.FPN.FUSE_TYPE", "sum"),
    ("MODEL.MASK_ON", False),
    ("MODEL.KEYPOINT_ON", False),
    ("INPUT.FORMAT", "RGB"),
)

#: The canonical box of detectron2's ``StandardROIHeads`` (its ``ROIPooler`` default).
_STANDARD_CANONICAL_BOX = 224.0


def _value(cfg: CfgNode, key: str) -> object:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return tuple(node) if isinstance(node, list) else node


def _per_level(values: list, levels: int, key: str) -> list:
    """detectron2's broadcasting of ``ANCHOR_GENERATOR`` lists: one entry for all levels, or
    one per level."""
    if len(values) == 1:
        return list(values) * levels
    if len(values) != levels:
        raise ConfigError(f"{key} has {len(values)} entries, expected 1 or {levels} (RPN levels)")
    return list(values)


def torchvision_layout(cfg: CfgNode) -> FasterRCNNLayout:
    """The torchvision layout of the detector ``cfg`` describes (its test-time settings).

    Raises:
        ConfigError: naming the first config key whose value torchvision's ``FasterRCNN``
            cannot express (cascade heads, masks, class-agnostic boxes, BGR input, …).
    """
    _check_required(cfg)
    spnas = cfg.MODEL.SPNAS
    spec = ModelSpec(
        spnas.ARCH,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        parallel=ParallelCode(tuple(spnas.PARALLEL)) if len(spnas.PARALLEL) else None,
        base_width=spnas.BASE_WIDTH,
        stem=spnas.STEM,
        norm=spnas.NORM,
        xb_groups=spnas.XB_GROUPS,
        fpn_channels=cfg.MODEL.FPN.OUT_CHANNELS,
    )
    _check_in_features(cfg, spec)
    sizes, ratios = _anchors(cfg, spec.arch.num_stages + 1)
    _check_normalization(cfg)
    rpn, roi = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    return FasterRCNNLayout(
        spec=spec,
        anchor_sizes=sizes,
        aspect_ratios=ratios,
        representation_size=cfg.MODEL.ROI_BOX_HEAD.FC_DIM,
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        # detectron2 pads to the coarsest FPN stride; so does the export, so that both see
        # the same padded image.
        size_divisible=2 ** (spec.arch.num_stages + 1),
        sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        canonical_box_size=(
            pooler_canonical_box_size(cfg)
            if cfg.MODEL.ROI_HEADS.NAME == "InputScaledROIHeads"
            else _STANDARD_CANONICAL_BOX
        ),
        detectron2_geometry=True,
        options={
            "rpn_pre_nms_top_n_train": rpn.PRE_NMS_TOPK_TRAIN,
            "rpn_pre_nms_top_n_test": rpn.PRE_NMS_TOPK_TEST,
            "rpn_post_nms_top_n_train": rpn.POST_NMS_TOPK_TRAIN,
            "rpn_post_nms_top_n_test": rpn.POST_NMS_TOPK_TEST,
            "rpn_nms_thresh": rpn.NMS_THRESH,
            "rpn_fg_iou_thresh": rpn.IOU_THRESHOLDS[-1],
            "rpn_bg_iou_thresh": rpn.IOU_THRESHOLDS[0],
            "rpn_batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
            "rpn_positive_fraction": rpn.POSITIVE_FRACTION,
            "box_score_thresh": roi.SCORE_THRESH_TEST,
            "box_nms_thresh": roi.NMS_THRESH_TEST,
            "box_detections_per_img": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_fg_iou_thresh": roi.IOU_THRESHOLDS[-1],
            "box_bg_iou_thresh": roi.IOU_THRESHOLDS[-1],
            "box_batch_size_per_image": roi.BATCH_SIZE_PER_IMAGE,
            "box_positive_fraction": roi.POSITIVE_FRACTION,
        },
    )


def _check_required(cfg: CfgNode) -> None:
    for key, expected in _REQUIRED:
        found = _value(cfg, key)
        if isinstance(expected, tuple) and isinstance(expected[0], str):
            accepted = expected
        else:
            if isinstance(expected, tuple):
                found = tuple(float(v) for v in found)
            accepted = (expected,)
        if found not in accepted:
            raise ConfigError(
                f"{key} is {found!r}; a torchvision FasterRCNN needs "
                f"{' or '.join(repr(value) for value in accepted)}, so this "
                "detector cannot be exported for torchvision"
            )


def _check_in_features(cfg: CfgNode, spec: ModelSpec) -> None:
    levels = spec.arch.num_stages + 1
    if list(cfg.MODEL.RPN.IN_FEATURES) != [f"p{k}" for k in range(2, levels + 2)]:
        raise ConfigError(
            f"MODEL.RPN.IN_FEATURES is {list(cfg.MODEL.RPN.IN_FEATURES)}; torchvision's RPN "
            f"reads every FPN level, p2 … p{levels + 1} for {spec.arch}"
        )
    if list(cfg.MODEL.ROI_HEADS.IN_FEATURES) != [f"p{k}" for k in range(2, levels + 1)]:
        raise ConfigError(
            f"MODEL.ROI_HEADS.IN_FEATURES is {list(cfg.MODEL.ROI_HEADS.IN_FEATURES)}; "
            f"torchvision pools from the stage levels, p2 … p{levels} for {spec.arch}"
        )


def _anchors(cfg: CfgNode, levels: int) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """Anchor sizes per level and the aspect ratios (the same at every level)."""
    ratios = _per_level(
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, levels, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"
    )
    if any(list(r) != list(ratios[0]) for r in ratios):
        raise ConfigError(
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS differ between levels; torchvision's RPN "
            "head needs the same anchors per location at every level"
        )
    sizes = _per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES, levels, "MODEL.ANCHOR_GENERATOR.SIZES")
    if any(len(s) != len(sizes[0]) for s in sizes):
        raise ConfigError("MODEL.ANCHOR_GENERATOR.SIZES has a different count at some level")
    if cfg.MODEL.ANCHOR_GENERATOR.OFFSET != 0.0:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.OFFSET is {cfg.MODEL.ANCHOR_GENERATOR.OFFSET}; torchvision "
            "places anchors at offset 0"
        )
    return (
        tuple(tuple(float(v) for v in s) for s in sizes),
        tuple(float(r) for r in ratios[0]),
    )


def _check_normalization(cfg: CfgNode) -> None:
    for key, expected in (("PIXEL_MEAN", PIXEL_MEAN_RGB), ("PIXEL_STD", PIXEL_STD_RGB)):
        found = [float(v) for v in cfg.MODEL[key]]
        if len(found) != 3 or not all(
            math.isclose(a, b, rel_tol=1e-6) for a, b in zip(found, expected, strict=True)
        ):
            raise ConfigError(
                f"MODEL.{key} is {found}; the torchvision export normalises with the ImageNet "
                f"statistics {list(expected)} that spnas backbones are pretrained with"
            )


def _anchor_permutation(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """``perm[t]`` = detectron2's anchor index of torchvision's anchor ``t`` at a location.

    detectron2: ``size * R + ratio``; torchvision: ``ratio * S + size``.
    """
    return torch.tensor(
        [size * num_ratios + ratio for ratio in range(num_ratios) for size in range(num_sizes)]
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: FasterRCNNLayout
) -> dict[str, torch.Tensor]:
    """The torchvision state dict of the detectron2 detector whose weights are ``state``.

    Raises:
        WeightsError: naming a key that is missing, or left over (a head torchvision lacks).
    """
    tensors = _Tensors(state, layout.spec)
    out = {
        **_convert_backbone(tensors, layout.spec),
        **_convert_rpn(tensors, layout),
        **_convert_box_head(tensors, layout.spec.num_classes),
    }
    # The input normalisation is the layout's; anchors are recomputed from it.
    leftover = [
        key
        for key in tensors.remaining
        if key not in ("pixel_mean", "pixel_std") and "anchor_generator" not in key
    ]
    if leftover:
        raise WeightsError(
            f"detectron2 weights have {len(leftover)} tensors a torchvision FasterRCNN has no "
            f"place for, e.g. {leftover[0]!r}"
        )
    return out


class _Tensors:
    """The detectron2 tensors not converted yet; :meth:`take` hands each out once."""

    def __init__(self, state: Mapping[str, torch.Tensor], spec: ModelSpec) -> None:
        self.remaining = dict(state)
        self.spec = spec

    def take(self, key: str) -> torch.Tensor:
        if key not in self.remaining:
            raise WeightsError(
                f"detectron2 weights lack {key!r}, expected a Faster R-CNN of {self.spec.arch}"
            )
        return self.remaining.pop(key)


def _convert_backbone(tensors: _Tensors, spec: ModelSpec) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in tensors.remaining if k.startswith("backbone.bottom_up.")]:
        out["backbone.body." + key.removeprefix("backbone.bottom_up.")] = tensors.take(key)
    for i, stage in enumerate(spec.arch.stage_names):
        level = int(stage.removeprefix("res"))  # detectron2 names FPN convs by log2(stride)
        for d2_name, tv_name in (("fpn_lateral", "inner_blocks"), ("fpn_output", "layer_blocks")):
            for param in ("weight", "bias"):
                out[f"backbone.fpn.{tv_name}.{i}.0.{param}"] = tensors.take(
                    f"backbone.{d2_name}{level}.{param}"
                )
    return out


def _convert_rpn(tensors: _Tensors, layout: FasterRCNNLayout) -> dict[str, torch.Tensor]:
    num_sizes, num_ratios = len(layout.anchor_sizes[0]), len(layout.aspect_ratios)
    perm = _anchor_permutation(num_sizes, num_ratios)
    rpn = "proposal_generator.rpn_head."
    out: dict[str, torch.Tensor] = {}
    for param in ("weight", "bias"):
        out[f"rpn.head.conv.0.0.{param}"] = tensors.take(f"{rpn}conv.{param}")
        logits = tensors.take(f"{rpn}objectness_logits.{param}")
        out[f"rpn.head.cls_logits.{param}"] = logits[perm]
        deltas = tensors.take(f"{rpn}anchor_deltas.{param}")
        # (A·4, …) → (A, 4, …): the 4 box deltas of each anchor stay together.
        grouped = deltas.reshape(num_sizes * num_ratios, 4, *deltas.shape[1:])
        out[f"rpn.head.bbox_pred.{param}"] = grouped[perm].reshape(deltas.shape)
    return out


def _convert_box_head(tensors: _Tensors, num_classes: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for d2_name, tv_name in (("fc1", "fc6"), ("fc2", "fc7")):
        for param in ("weight", "bias"):
            out[f"roi_heads.box_head.{tv_name}.{param}"] = tensors.take(
                f"roi_heads.box_head.{d2_name}.{param}"
            )
    k = num_classes
    order = torch.tensor([k, *range(k)])  # background first
    for param in ("weight", "bias"):
        scores = tensors.take(f"roi_heads.box_predictor.cls_score.{param}")
        out[f"roi_heads.box_predictor.cls_score.{param}"] = scores[order]
        boxes = tensors.take(f"roi_heads.box_predictor.bbox_pred.{param}")
        if boxes.shape[0] != 4 * k:
            raise WeightsError(
                f"roi_heads.box_predictor.bbox_pred.{param} has {boxes.shape[0]} rows, expected "
                f"{4 * k} (class-specific boxes of {k} classes)"
            )
        background = torch.zeros((4, *boxes.shape[1:]), dtype=boxes.dtype)
        out[f"roi_heads.box_predictor.bbox_pred.{param}"] = torch.cat([background, boxes])
    return out
