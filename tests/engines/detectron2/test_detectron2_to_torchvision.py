"""Converting a detectron2 Faster R-CNN into torchvision's, and the exported detector file."""

from __future__ import annotations

import pytest
import torch

from spnas.engines import ModelSpec
from spnas.engines.detectron2 import config_path, configure_levels
from spnas.engines.detectron2.config import get_spnas_cfg
from spnas.engines.detectron2.engine import apply_spec
from spnas.engines.detectron2.to_torchvision import convert_state_dict, torchvision_layout
from spnas.engines.torchvision import (
    FasterRCNNLayout,
    build_faster_rcnn,
    load_detector,
    save_detector,
)
from spnas.exceptions import ConfigError, WeightsError

CPU_CONFIG = "faster_rcnn_spnet_fpn_cpu.yaml"


def d2_cfg(spec: ModelSpec, config: str = CPU_CONFIG):
    cfg = get_spnas_cfg(str(config_path(config)))
    apply_spec(cfg, spec)
    cfg.MODEL.DEVICE = "cpu"
    configure_levels(cfg)
    return cfg


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights and BN statistics everywhere, so that no mapping error hides behind a
    zero or an identity."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 - 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    """A detectron2 detector with random weights (5 stages, parallel subnets, BN, two anchor
    sizes per level) and its torchvision conversion."""
    spec = ModelSpec(
        "BB(11,d1,d1d,1,d1)",
        num_classes=3,
        parallel="(0,1,0,1,0)",
        base_width=8,
        norm="BN",
        fpn_channels=16,
        anchor_size=8,
    )
    from detectron2.modeling import build_model  # after spnas: its compatibility shims

    cfg = d2_cfg(spec)
    d2 = randomized(build_model(cfg))
    layout = torchvision_layout(cfg)
    tv = build_faster_rcnn(layout).eval()
    tv.load_state_dict(convert_state_dict(d2.state_dict(), layout))
    return d2, tv, layout


def test_layout_follows_the_config(pair) -> None:
    _, tv, layout = pair
    assert layout.anchor_sizes[0] == pytest.approx((8.0, 11.31), abs=1e-6)
    assert len(layout.anchor_sizes) == 6  # five stages + the max-pooled level
    assert layout.representation_size == 256 and layout.min_size == layout.max_size == 128
    assert layout.size_divisible == 64
    assert tv.rpn._pre_nms_top_n["testing"] == 300 and tv.rpn._post_nms_top_n["testing"] == 100
    assert tv.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert tv.rpn.proposal_matcher.high_threshold == 0.5


@torch.no_grad()
def test_features_and_rpn_outputs_are_identical(pair) -> None:
    d2, tv, layout = pair
    image = torch.rand(3, 128, 96, generator=torch.Generator().manual_seed(1))
    padded = d2.preprocess_image([{"image": image * 255}]).tensor
    images, _ = tv.transform([image])
    assert images.tensors.shape == padded.shape
    torch.testing.assert_close(images.tensors, padded, atol=1e-5, rtol=0)

    d2_features = d2.backbone(padded)
    tv_features = tv.backbone(images.tensors)
    assert len(d2_features) == len(tv_features) == 6
    for a, b in zip(d2_features.values(), tv_features.values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    rpn_in = [d2_features[name] for name in d2.proposal_generator.in_features]
    d2_logits, d2_deltas = d2.proposal_generator.rpn_head(rpn_in)
    tv_logits, tv_deltas = tv.rpn.head(list(tv_features.values()))
    # Per location: detectron2 lists anchors size-major, torchvision ratio-major.
    sizes, ratios = len(layout.anchor_sizes[0]), len(layout.aspect_ratios)
    perm = [s * ratios + r for r in range(ratios) for s in range(sizes)]
    for a, b in zip(d2_logits, tv_logits, strict=True):
        torch.testing.assert_close(a[:, perm], b, atol=1e-5, rtol=1e-5)
    for a, b in zip(d2_deltas, tv_deltas, strict=True):
        grouped = a.reshape(a.shape[0], sizes * ratios, 4, *a.shape[2:])[:, perm]
        torch.testing.assert_close(grouped.reshape(a.shape), b, atol=1e-5, rtol=1e-5)

    # The anchors themselves differ only by torchvision's rounding to whole pixels.
    d2_anchors = d2.proposal_generator.anchor_generator(rpn_in)
    tv_anchors = tv.rpn.anchor_generator(images, list(tv_features.values()))[0]
    d2_flat = torch.cat([a.tensor.reshape(-1, sizes * ratios, 4)[:, perm] for a in d2_anchors])
    assert (d2_flat.reshape(-1, 4) - tv_anchors).abs().max() <= 0.5


@torch.no_grad()
def test_box_predictor_moves_background_first(pair) -> None:
    d2, tv, _ = pair
    features = torch.rand(5, 256, generator=torch.Generator().manual_seed(2))
    d2_scores, d2_boxes = d2.roi_heads.box_predictor(features)
    tv_scores, tv_boxes = tv.roi_heads.box_predictor(features)
    torch.testing.assert_close(tv_scores[:, 0], d2_scores[:, -1])
    torch.testing.assert_close(tv_scores[:, 1:], d2_scores[:, :-1])
    torch.testing.assert_close(tv_boxes[:, 4:], d2_boxes)


def test_detector_file_round_trip_and_bad_files(pair, tmp_path) -> None:
    _, tv, layout = pair
    path = save_detector(tv.state_dict(), layout, tmp_path / "model_torchvision.pth")
    loaded = load_detector(path)
    assert not loaded.training
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = tv([image])[0], loaded([image])[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"])

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"truncated.pth.*could not be read"):
        load_detector(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(WeightsError, match=r"foreign.pth.*expected 'spnas.torchvision"):
        load_detector(foreign)
    with pytest.raises(WeightsError, match=r"missing.pth.*does not exist"):
        load_detector(tmp_path / "missing.pth")


def test_detectors_torchvision_cannot_express_are_refused() -> None:
    spec = ModelSpec("BB(11,d1,d1,d1)", num_classes=2, base_width=8)
    cfg = d2_cfg(spec, "cascade_rcnn_spnet_fpn_full.yaml")
    with pytest.raises(
        ConfigError,
        match=r"MODEL.ROI_HEADS.NAME is 'CascadeROIHeads'.*'StandardROIHeads' or "
        r"'InputScaledROIHeads'",
    ):
        torchvision_layout(cfg)
    cfg = d2_cfg(spec)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    with pytest.raises(ConfigError, match="CLS_AGNOSTIC_BBOX_REG"):
        torchvision_layout(cfg)
    cfg = d2_cfg(spec)
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    with pytest.raises(ConfigError, match=r"MODEL.PIXEL_MEAN"):
        torchvision_layout(cfg)


def test_layout_keeps_the_roi_pooler_canonical_box() -> None:
    spec = ModelSpec("BB(11,d1,d1,d1)", num_classes=2, base_width=8)
    cfg = d2_cfg(spec)  # InputScaledROIHeads at 128 px
    assert torchvision_layout(cfg).canonical_box_size == pytest.approx(224 * 128 / 800)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    layout = torchvision_layout(cfg)
    assert layout.canonical_box_size == 224
    # A detector exported before the layout had the field was trained with 224.
    values = layout.to_dict()
    del values["canonical_box_size"]
    assert FasterRCNNLayout.from_dict(values).canonical_box_size == 224
    model = build_faster_rcnn(torchvision_layout(d2_cfg(spec)))
    assert model.roi_heads.box_roi_pool.canonical_scale == pytest.approx(35.84)


def test_weights_of_another_detector_are_refused(pair) -> None:
    d2, _, layout = pair
    state = dict(d2.state_dict())
    state.pop("roi_heads.box_head.fc2.weight")
    with pytest.raises(WeightsError, match=r"lack 'roi_heads.box_head.fc2.weight'"):
        convert_state_dict(state, layout)
    state = dict(d2.state_dict())
    state["roi_heads.mask_head.mask_fcn1.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="mask_head"):
        convert_state_dict(state, layout)
