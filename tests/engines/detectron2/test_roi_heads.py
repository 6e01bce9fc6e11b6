"""The ROI pooler's canonical box follows the input size (``InputScaledROIHeads``)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from spnas.engines.detectron2 import InputScaledROIHeads, config_path, get_spnas_cfg
from spnas.exceptions import ConfigError

LEVELS = ("p2", "p3", "p4", "p5")


def cpu_cfg(**box_head):
    """The shipped CPU config (128 px images), as searches and the demo use it."""
    cfg = get_spnas_cfg(str(config_path("faster_rcnn_spnet_fpn_cpu.yaml")))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    for key, value in box_head.items():
        cfg.MODEL.ROI_BOX_HEAD[key] = value
    return cfg


def roi_heads(cfg):
    shapes = {
        name: ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, stride=2 ** int(name[1:]))
        for name in cfg.MODEL.ROI_HEADS.IN_FEATURES
    }
    return build_roi_heads(cfg, shapes)


def proposals() -> Boxes:
    """Square proposals of 8–100 px (log-uniform), the object sizes of 128 px images."""
    sides = torch.logspace(math.log10(8), math.log10(100), 200)
    return Boxes(torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1))


def level_histogram(heads) -> dict[str, int]:
    """How many of :func:`proposals` each level receives, as the heads' pooler assigns them."""
    pooler = heads.box_pooler
    levels = assign_boxes_to_levels(
        [proposals()],
        pooler.min_level,
        pooler.max_level,
        pooler.canonical_box_size,
        pooler.canonical_level,
    )
    counts = torch.bincount(levels, minlength=len(LEVELS)).tolist()
    return dict(zip(LEVELS, counts, strict=True))


def test_shipped_configs_pool_small_images_from_every_level() -> None:
    cfg = cpu_cfg()
    assert cfg.MODEL.ROI_HEADS.NAME == "InputScaledROIHeads"
    assert cfg.INPUT.MIN_SIZE_TEST == 128
    heads = roi_heads(cfg)
    assert isinstance(heads, InputScaledROIHeads)
    assert heads.box_pooler.canonical_box_size == pytest.approx(224 * 128 / 800)  # 35.84 px
    histogram = level_histogram(heads)
    # Log-uniform sides over 8–100 px: p2 < 17.9 px ≤ p3 < 35.8 px ≤ p4 < 71.7 px ≤ p5, so
    # 32 %, 27 %, 27 % and 13 % of the boxes.
    assert all(count >= 20 for count in histogram.values()), histogram
    assert sum(histogram.values()) == 200


def test_detectron2_default_sends_every_small_box_to_p2() -> None:
    """What the shipped configs replace: StandardROIHeads' 224 px canonical box at 128 px."""
    cfg = cpu_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    assert level_histogram(roi_heads(cfg)) == {"p2": 200, "p3": 0, "p4": 0, "p5": 0}


def test_configured_size_overrides_the_rule() -> None:
    heads = roi_heads(cpu_cfg(CANONICAL_BOX_SIZE=224))
    assert heads.box_pooler.canonical_box_size == 224
    assert level_histogram(heads)["p2"] == 200


def test_negative_size_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"CANONICAL_BOX_SIZE is -1.*expected 0"):
        roi_heads(cpu_cfg(CANONICAL_BOX_SIZE=-1))


def test_weights_are_standard_roi_heads_weights() -> None:
    """Only the pooler differs: checkpoints load into either class."""
    scaled = roi_heads(cpu_cfg())
    cfg = cpu_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    standard = roi_heads(cfg)
    assert {k: v.shape for k, v in scaled.state_dict().items()} == {
        k: v.shape for k, v in standard.state_dict().items()
    }
