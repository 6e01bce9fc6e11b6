"""Weight inheritance: what :func:`~spnas.morphism.inherit` copies, zeroes and reports.

Bare backbones and whole-detector-shaped models (detectron2 and torchvision naming). Function
preservation itself is tested in ``test_preservation.py``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from spnas.arch import SerialCode
from spnas.exceptions import ArchError, WeightsError
from spnas.modeling import SerialNet, SPNet
from spnas.morphism import (
    AddStage,
    Expand,
    InheritReport,
    Swap,
    apply_all,
    find_backbone,
    inherit,
)

WIDTH = 16
XB_GROUPS = 8
FPN_CHANNELS = 8
R18 = SerialCode.parse("BB(11,d1,d1,d1)")
LAST_NORM = {"BB": "norm2", "BNB": "norm3", "XB": "norm3"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def serialnet(code: SerialCode | str) -> SerialNet:
    return SerialNet(code, base_width=WIDTH, xb_groups=XB_GROUPS)


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every float tensor random and non-zero, so copied, zeroed and untouched are told apart."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            values = torch.empty(tensor.shape).uniform_(0.5, 1.5, generator=g)
            tensor.copy_(values if name.endswith("running_var") else values - 1.0 + 0.01)
    return model


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def params_of(model: nn.Module, keys: set[str] | tuple[str, ...]) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if k in set(keys))


def block_keys(model: nn.Module, name: str, prefix: str = "") -> set[str]:
    return {f"{prefix}{name}.{k}" for k in model.get_submodule(prefix + name).state_dict()}


def assert_consistent(report: InheritReport, child: nn.Module, parent_state: dict) -> None:
    """The report's bookkeeping: a partition of the child's keys, counts that add up."""
    child_keys = list(child.state_dict())
    assert sorted(report.matched + report.new + report.mismatched) == sorted(child_keys)
    assert len(set(report.matched + report.new + report.mismatched)) == len(child_keys)
    assert set(report.dropped) <= set(parent_state)
    assert report.total_params == sum(p.numel() for p in child.parameters())
    assert report.inherited_params == params_of(child, report.matched)
    assert report.fraction == report.inherited_params / report.total_params
    summary = report.summary()
    assert f"{report.fraction:.1%}" in summary
    for count, word in (
        (len(report.matched), "matched"),
        (len(report.new), "new"),
        (len(report.mismatched), "reshaped"),
        (len(report.dropped), "dropped"),
    ):
        assert re.search(rf"\b{count} (tensors )?{word}\b", summary), (count, word, summary)


# ---------------------------------------------------------------------------- bare backbones
@pytest.mark.parametrize("block", ["BB", "BNB", "XB"])
def test_expand_report_new_keys_are_the_new_block(block: str) -> None:
    code = SerialCode.parse(f"{block}(11,d1,d1,d1)")
    parent = randomize(serialnet(code), 1)
    ops = [Expand(1, 0)]
    child = randomize(serialnet(apply_all(code, ops)), 2)
    before = clone_state(child)
    report = inherit(parent.state_dict(), code, child, ops)

    new_block = block_keys(child, "res3.1")
    assert set(report.new) == new_block
    assert report.mismatched == () and report.dropped == ()
    assert len(report.matched) == len(parent.state_dict())
    new_params = params_of(child, new_block)
    assert new_params > 0
    assert report.inherited_params == report.total_params - new_params
    assert 0 < report.fraction < 1
    assert_consistent(report, child, parent.state_dict())

    state = child.state_dict()
    # The new block's last norm starts at exactly zero: the branch outputs 0.
    last = LAST_NORM[block]
    assert torch.equal(state[f"res3.1.{last}.weight"], torch.zeros(code.stage_channels(WIDTH)[1]))
    assert not state[f"res3.1.{last}.bias"].any()
    # Its other tensors keep the child's initialisation; everything else is the parent's.
    for key in new_block - {f"res3.1.{last}.weight", f"res3.1.{last}.bias"}:
        assert torch.equal(state[key], before[key]), key
    for key, value in parent.state_dict().items():
        child_key = key.replace("res3.1.", "res3.2.") if key.startswith("res3.1.") else key
        assert torch.equal(state[child_key], value), key


def test_swap_inherits_everything_and_moves_weights_with_the_block() -> None:
    parent = randomize(serialnet(R18), 1)
    ops = [Swap(0, "left")]
    child_code = apply_all(R18, ops)
    assert str(child_code) == "BB(1,1d1,d1,d1)"
    child = randomize(serialnet(child_code), 2)
    report = inherit(parent.state_dict(), R18, child, ops)

    assert report.fraction == 1.0
    assert report.new == () and report.mismatched == () and report.dropped == ()
    assert_consistent(report, child, parent.state_dict())
    p, c = parent.state_dict(), child.state_dict()
    # Parent block res2.1 now opens stage 1, and the old res3.0 follows it.
    assert torch.equal(c["res3.0.conv1.weight"], p["res2.1.conv1.weight"])
    assert not torch.equal(c["res3.0.conv1.weight"], p["res3.0.conv1.weight"])
    for suffix in serialnet(R18).get_submodule("res2.1").state_dict():
        assert torch.equal(c[f"res3.0.{suffix}"], p[f"res2.1.{suffix}"]), suffix
    for suffix in serialnet(R18).get_submodule("res3.0").state_dict():
        assert torch.equal(c[f"res3.1.{suffix}"], p[f"res3.0.{suffix}"]), suffix
    assert torch.equal(c["res3.2.conv2.weight"], p["res3.1.conv2.weight"])
    assert "res2.1.conv1.weight" not in c


def test_inherit_copies_rather_than_aliases() -> None:
    parent = randomize(serialnet(R18), 1)
    state = parent.state_dict()
    snapshot = clone_state(parent)
    child = serialnet(R18)
    inherit(state, R18, child)
    with torch.no_grad():
        for p in child.parameters():
            p.add_(1.0)
    for key, value in state.items():
        assert torch.equal(value, snapshot[key]), key


def test_wrong_child_code_names_both_codes() -> None:
    parent = serialnet(R18)
    wrong = serialnet("BB(11,d1,d1,d11)")
    with pytest.raises(ArchError) as info:
        inherit(parent.state_dict(), R18, wrong, [Expand(0, 0)])
    message = str(info.value)
    assert str(R18) in message and "BB(11,d1,d1,d11)" in message
    assert "BB(111,d1,d1,d1)" in message  # what the ops make of the parent


def test_parent_parallel_code_of_wrong_length() -> None:
    child = SPNet(R18, "(1,0,0,0)", base_width=WIDTH)
    with pytest.raises(ArchError, match=r"\(1,0\).*BB\(11,d1,d1,d1\)"):
        inherit(serialnet(R18).state_dict(), R18, child, parent_parallel="(1,0)")


def test_model_without_backbone_raises_weights_error() -> None:
    with pytest.raises(WeightsError, match="Linear"):
        inherit({}, R18, nn.Linear(2, 2))


# ---------------------------------------------------------------------------- detectors
class D2Like(nn.Module):
    """Key layout of a detectron2 GeneralizedRCNN with an FPN on a SerialNet bottom-up."""

    def __init__(self, code: SerialCode | str) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = serialnet(code)
        for name, shape in self.backbone.bottom_up.output_shape().items():
            level = int(name[len("res") :])
            lateral = nn.Conv2d(shape.channels, FPN_CHANNELS, 1)
            output = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1)
            self.backbone.add_module(f"fpn_lateral{level}", lateral)
            self.backbone.add_module(f"fpn_output{level}", output)
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Module()
        self.roi_heads.box_head.fc1 = nn.Linear(FPN_CHANNELS * 7 * 7, 32)


class TorchvisionLike(nn.Module):
    """Key layout of torchvision's ``BackboneWithFPN`` (``body``, ``fpn.inner_blocks.{i}.0``)."""

    def __init__(self, code: SerialCode | str) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = serialnet(code)
        shapes = self.backbone.body.output_shape().values()
        self.backbone.fpn = nn.Module()
        self.backbone.fpn.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s.channels, FPN_CHANNELS, 1)) for s in shapes
        )
        self.backbone.fpn.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1)) for _ in shapes
        )
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Module()
        self.roi_heads.box_head.fc6 = nn.Linear(FPN_CHANNELS * 7 * 7, 32)


def test_detectron2_layout_add_stage_zeroes_new_lateral_and_maps_backbone() -> None:
    parent = randomize(D2Like(R18), 1)
    ops = [Swap(0, "left"), AddStage()]
    child_code = apply_all(R18, ops)
    child = randomize(D2Like(child_code), 2)
    before = clone_state(child)
    report = inherit(parent.state_dict(), R18, child, ops)

    prefix, backbone = find_backbone(child)
    assert prefix == "backbone.bottom_up." and backbone.code == child_code
    p, c = parent.state_dict(), child.state_dict()
    # The new level: lateral exactly zero (the top-down sum into P5 is unchanged), output conv
    # as initialised.
    assert not c["backbone.fpn_lateral6.weight"].any()
    assert not c["backbone.fpn_lateral6.bias"].any()
    assert c["backbone.fpn_lateral6.weight"].shape == (FPN_CHANNELS, 8 * WIDTH, 1, 1)
    assert torch.equal(c["backbone.fpn_output6.weight"], before["backbone.fpn_output6.weight"])
    assert c["backbone.fpn_output6.weight"].abs().min() > 0
    # Existing levels and heads: copied.
    for level in range(2, 6):
        for conv in ("fpn_lateral", "fpn_output"):
            for kind in ("weight", "bias"):
                key = f"backbone.{conv}{level}.{kind}"
                assert torch.equal(c[key], p[key]), key
    for kind in ("weight", "bias"):
        key = f"roi_heads.box_head.fc1.{kind}"
        assert torch.equal(c[key], p[key]), key
    # Backbone keys go through the prefix and the block map.
    bu = "backbone.bottom_up."
    assert torch.equal(c[bu + "res3.0.conv1.weight"], p[bu + "res2.1.conv1.weight"])
    assert torch.equal(c[bu + "res3.1.conv1.weight"], p[bu + "res3.0.conv1.weight"])
    assert torch.equal(c[bu + "stem.conv1.weight"], p[bu + "stem.conv1.weight"])
    assert not c[bu + "res6.0.norm2.weight"].any() and not c[bu + "res6.0.norm2.bias"].any()

    expected_new = block_keys(child, "res6.0", bu) | {
        f"backbone.{conv}6.{kind}"
        for conv in ("fpn_lateral", "fpn_output")
        for kind in ("weight", "bias")
    }
    assert set(report.new) == expected_new
    assert report.mismatched == () and report.dropped == ()
    assert 0 < report.fraction < 1
    assert_consistent(report, child, p)


def test_torchvision_layout_zeroes_new_inner_block() -> None:
    parent = randomize(TorchvisionLike(R18), 1)
    ops = [AddStage()]
    child = randomize(TorchvisionLike(apply_all(R18, ops)), 2)
    before = clone_state(child)
    report = inherit(parent.state_dict(), R18, child, ops)

    assert find_backbone(child)[0] == "backbone.body."
    p, c = parent.state_dict(), child.state_dict()
    assert not c["backbone.fpn.inner_blocks.4.0.weight"].any()
    assert not c["backbone.fpn.inner_blocks.4.0.bias"].any()
    key = "backbone.fpn.layer_blocks.4.0.weight"
    assert torch.equal(c[key], before[key]) and c[key].abs().min() > 0
    for i in range(4):
        for block in ("inner_blocks", "layer_blocks"):
            key = f"backbone.fpn.{block}.{i}.0.weight"
            assert torch.equal(c[key], p[key]), key
    assert torch.equal(c["roi_heads.box_head.fc6.weight"], p["roi_heads.box_head.fc6.weight"])
    assert torch.equal(
        c["backbone.body.res5.0.conv1.weight"], p["backbone.body.res5.0.conv1.weight"]
    )
    assert not c["backbone.body.res6.0.norm2.weight"].any()
    assert report.dropped == () and report.mismatched == ()
    assert_consistent(report, child, p)


def test_fpn_lateral_whose_channels_change_is_mismatched() -> None:
    # swap(b1,right) moves the "d" opening stage 2 to the end of stage 1: stage 1 now ends at
    # 4n channels instead of 2n, so its lateral conv reads 64 channels, not 32.
    parent = randomize(D2Like(R18), 1)
    ops = [Swap(1, "right")]
    child_code = apply_all(R18, ops)
    assert str(child_code) == "BB(11,d1d,1,d1)"
    assert child_code.stage_channels(WIDTH)[1] != R18.stage_channels(WIDTH)[1]
    child = randomize(D2Like(child_code), 2)
    before = clone_state(child)
    report = inherit(parent.state_dict(), R18, child, ops)

    assert report.mismatched == ("backbone.fpn_lateral3.weight",)
    assert report.new == ()
    c = child.state_dict()
    # A mismatched tensor keeps its initialisation: neither copied nor zeroed.
    assert torch.equal(c["backbone.fpn_lateral3.weight"], before["backbone.fpn_lateral3.weight"])
    assert torch.equal(
        c["backbone.fpn_lateral3.bias"], parent.state_dict()["backbone.fpn_lateral3.bias"]
    )
    assert report.dropped == ("backbone.fpn_lateral3.weight",)
    mismatched = params_of(child, {"backbone.fpn_lateral3.weight"})
    assert report.inherited_params == report.total_params - mismatched
    assert math.isclose(report.fraction, 1 - mismatched / report.total_params)
    assert_consistent(report, child, parent.state_dict())
