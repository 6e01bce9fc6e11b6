"""Behaviour of ``SerialNet``: shapes, names, norms, stems, errors (docs/design.md §1)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from spnas.arch import RESNET18, RESNET50, SerialCode
from spnas.exceptions import ArchError, ConfigError
from spnas.modeling import SerialNet
from spnas.modeling.blocks import IdentityShortcut, ProjectionShortcut

# Codes with their stage output channels as multiples of the base width, worked out by hand
# from docs/design.md §1 (n doubles at each d; e = 1 for BB, 4 for BNB/XB), not from the code object.
CODES = [
    ("BB(11,d1,d1,d1)", (1, 2, 4, 8)),
    ("BNB(1,d1,d1,d1)", (4, 8, 16, 32)),
    ("XB(1,d1,d1,d1)", (4, 8, 16, 32)),
]


def _ceil_halvings(size: int, times: int) -> int:
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def _expected_hw(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Every stride-2 layer (7×7/2 pad 3, 3×3/2 pad 1, 1×1/2, x[::2]) gives ceil(size / 2)."""
    times = int(math.log2(stride))
    return (_ceil_halvings(size[0], times), _ceil_halvings(size[1], times))


def _check_outputs(net: SerialNet, x: torch.Tensor, mults: tuple[int, ...]) -> None:
    out = net(x)
    shapes = net.output_shape()
    assert list(out) == list(shapes) == list(net.out_features)
    for name, spec in shapes.items():
        i = int(name[3:]) - 2
        assert spec.stride == 4 * 2**i
        assert spec.channels == mults[i] * net.base_width
        assert out[name].shape == (
            x.shape[0],
            spec.channels,
            *_expected_hw(x.shape[-2:], spec.stride),
        )


@pytest.mark.parametrize(("code", "mults"), CODES, ids=[c[0] for c in CODES])
@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("stem", ["resnet", "deep"])
def test_outputs_match_output_shape(code: str, mults: tuple, width: int, stem: str) -> None:
    torch.manual_seed(0)
    net = SerialNet(code, base_width=width, stem=stem)
    assert list(net.output_shape()) == ["res2", "res3", "res4", "res5"]
    with torch.no_grad():
        _check_outputs(net.eval(), torch.randn(2, 3, 96, 128), mults)


@pytest.mark.parametrize(("code", "mults"), CODES, ids=[c[0] for c in CODES])
@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
def test_norms_at_width_16(code: str, mults: tuple, norm: str) -> None:
    torch.manual_seed(1)
    net = SerialNet(code, base_width=16, norm=norm)
    kind = {"BN": nn.BatchNorm2d, "FrozenBN": FrozenBatchNorm2d, "GN": nn.GroupNorm}[norm]
    norms = [m for n, m in net.named_modules() if re.search(r"norm\d?$", n)]
    assert norms and all(type(m) is kind for m in norms)
    with torch.no_grad():
        _check_outputs(net.train(), torch.randn(2, 3, 96, 128), mults)


def test_group_norm_groups_divide_narrow_widths() -> None:
    net = SerialNet("BB(1,d1)", base_width=16, norm="GN", stem="deep")
    # 32 groups where the channels allow, the largest common divisor below it otherwise.
    assert net.stem.norm1.num_groups == 8  # deep stem: 16 // 2 = 8 channels
    assert net.res2[0].norm1.num_groups == 16
    assert net.res3[0].norm1.num_groups == 32


@pytest.mark.parametrize(
    ("code", "mults"),
    [
        ("BB(1,1,d1)", (1, 1, 2)),  # res3.0: stride 2, identity shortcut subsampling x[::2]
        ("BB(1d1,1,d1)", (2, 2, 4)),  # d mid-stage: stride-1 projection
        ("BNB(11,1d,d)", (4, 8, 16)),  # BNB stage starting with '1' and a d at its end
        ("XB(1,1d1,d)", (4, 8, 16)),
    ],
)
@pytest.mark.parametrize("stem", ["resnet", "deep"])
@pytest.mark.parametrize("size", [(65, 97), (97, 65), (64, 96)])
def test_odd_sizes_halve_with_ceil(code: str, mults: tuple, stem: str, size: tuple) -> None:
    torch.manual_seed(2)
    net = SerialNet(code, base_width=16, stem=stem)
    # A shortcut and a branch that disagreed on the size would fail in the addition.
    with torch.no_grad():
        _check_outputs(net.eval(), torch.randn(2, 3, *size), mults)


def test_identity_shortcut_with_stride_subsamples() -> None:
    net = SerialNet("BB(1,1,d1)", base_width=16)
    shortcut = net.res3[0].shortcut
    assert isinstance(shortcut, IdentityShortcut) and shortcut.stride == 2
    x = torch.randn(2, 16, 9, 7)
    assert torch.equal(shortcut(x), x[..., ::2, ::2])
    assert isinstance(net.res4[0].shortcut, ProjectionShortcut)
    assert net.res4[0].shortcut.conv.stride == (2, 2)


@pytest.mark.parametrize(
    ("code", "mults"),
    [("BB(1,d1,d,1,d)", (1, 2, 4, 4, 8)), ("BNB(1,d,d,1,d,1)", (4, 8, 16, 16, 32, 32))],
)
def test_five_and_six_stages(code: str, mults: tuple) -> None:
    torch.manual_seed(3)
    net = SerialNet(code, base_width=16)
    n = len(mults)
    assert list(net.output_shape()) == [f"res{i + 2}" for i in range(n)]
    assert net.output_shape()[f"res{n + 1}"].stride == 4 * 2 ** (n - 1)
    with torch.no_grad():
        # res7 (stride 128) of a 96×128 image is 1×1.
        _check_outputs(net.eval(), torch.randn(2, 3, 96, 128), mults)


def test_out_features_subset() -> None:
    torch.manual_seed(4)
    net = SerialNet("BB(11,d1,d1,d1)", base_width=16, out_features=["res3", "res5"])
    assert list(net.output_shape()) == ["res3", "res5"]
    full = SerialNet("BB(11,d1,d1,d1)", base_width=16)
    full.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = net.eval()(x)
        ref = full.eval()(x)
    assert list(out) == ["res3", "res5"]
    for name in out:
        assert torch.equal(out[name], ref[name])


def test_out_features_in_any_order_are_all_returned() -> None:
    # Regression: forward stopped at out_features[-1], so ["res4", "res2"] returned only res2.
    net = SerialNet("BB(1,d1,d1)", base_width=16, out_features=["res4", "res2"])
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 3, 64, 96))
    assert set(out) == set(net.output_shape()) == {"res2", "res4"}
    assert out["res4"].shape == (2, 64, 4, 6)


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"norm": "LayerNorm"}, "LayerNorm"),
        ({"norm": "bn"}, "bn"),
        ({"stem": "vgg"}, "vgg"),
        ({"out_features": ["res2", "res9"]}, "res9"),
        ({"out_features": ["p3"]}, "p3"),
        ({"base_width": 0}, "0"),
    ],
)
def test_bad_config_raises_config_error_naming_value(kwargs: dict, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        SerialNet("BB(1,d1,d1,d1)", **kwargs)
    assert value in str(info.value)


def test_xb_groups_must_divide_inner_width() -> None:
    # Base width 24: inner width 48 is not a multiple of 32 groups.
    with pytest.raises(ArchError, match=r"48") as info:
        SerialNet("XB(1,d1)", base_width=24)
    assert "groups" in str(info.value)
    net = SerialNet("XB(1,d1)", base_width=24, xb_groups=8)
    assert net.res2[0].conv2.groups == 8
    assert net.res2[0].conv2.in_channels == 48
    with torch.no_grad():
        _check_outputs(net.eval(), torch.randn(2, 3, 64, 96), (4, 8))


def test_xb_is_32x4d_at_width_64() -> None:
    net = SerialNet("XB(1,d1)")
    conv2 = net.res2[0].conv2
    assert (conv2.in_channels, conv2.groups) == (128, 32)  # 32 groups of 4 channels
    assert net.res3[0].conv2.in_channels == 256
    assert net.res3[0].conv3.out_channels == 512


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3])
def test_freeze(freeze_at: int) -> None:
    net = SerialNet("BB(1,d1,d1,d1)", base_width=16).freeze(freeze_at)
    # detectron2's FREEZE_AT: 1 = stem, 2 = stem + res2, …; 0 = nothing.
    frozen = {0: (), 1: ("stem.",), 2: ("stem.", "res2."), 3: ("stem.", "res2.", "res3.")}
    for name, p in net.named_parameters():
        assert p.requires_grad is not name.startswith(frozen[freeze_at]), name


def test_freeze_2_then_backward_gives_grads_only_to_unfrozen() -> None:
    torch.manual_seed(5)
    net = SerialNet("BB(1,d1,d1,d1)", base_width=16).freeze(2)
    out = net(torch.randn(2, 3, 64, 96))
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in net.named_parameters():
        if name.startswith(("stem.", "res2.")):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("code", ["BB(11,d1,d1,d1)", "BNB(111,d111,d11111,d11)", "XB(1d1,1,d11)"])
@pytest.mark.parametrize("stem", ["resnet", "deep"])
def test_parameter_names_and_projection_shortcuts(code: str, stem: str) -> None:
    code = SerialCode.parse(code)
    net = SerialNet(code, base_width=16, stem=stem)
    names = [n for n, _ in net.named_parameters()]
    pattern = re.compile(r"^res(\d+)\.(\d+)\.")
    for name in names:
        if name.startswith("stem."):
            continue
        match = pattern.match(name)
        assert match, name
        stage, index = int(match.group(1)) - 2, int(match.group(2))
        assert 0 <= stage < code.num_stages and 0 <= index < len(code.stages[stage]), name
    for spec in code.blocks():
        key = f"res{spec.stage + 2}.{spec.index}.shortcut.conv.weight"
        assert (key in names) is (spec.in_mult != spec.out_mult), key


@pytest.mark.parametrize(
    ("code", "projections"),
    [
        (RESNET18, ["res3.0", "res4.0", "res5.0"]),
        (RESNET50, ["res2.0", "res3.0", "res4.0", "res5.0"]),
        ("BB(1d1,1,d1)", ["res2.1", "res4.0"]),
    ],
)
def test_projection_shortcuts_by_hand(code: object, projections: list[str]) -> None:
    net = SerialNet(code, base_width=16)
    found = sorted(
        n.removesuffix(".shortcut.conv.weight")
        for n, _ in net.named_parameters()
        if n.endswith(".shortcut.conv.weight")
    )
    assert found == projections


def test_stem_parameter_names() -> None:
    resnet = {n for n, _ in SerialNet("BB(1)", base_width=16).stem.named_parameters()}
    deep = {n for n, _ in SerialNet("BB(1)", base_width=16, stem="deep").stem.named_parameters()}
    assert resnet == {"conv1.weight", "norm1.weight", "norm1.bias"}
    assert deep == resnet | {"conv2.weight", "norm2.weight", "norm2.bias"}


@pytest.mark.parametrize("code", [c[0] for c in CODES])
def test_backward_reaches_every_parameter(code: str) -> None:
    torch.manual_seed(6)
    net = SerialNet(code, base_width=16)
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    out = net(x)
    sum(o.square().mean() for o in out.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_non_nchw_input_raises() -> None:
    with pytest.raises(ValueError, match="NCHW"):
        SerialNet("BB(1)", base_width=16)(torch.randn(3, 64, 64))


# -- backbone keys in state dicts ------------------------------------------------------------


def test_split_backbone_finds_the_backbone_inside_a_detector_state() -> None:
    from spnas.modeling import is_bare_backbone, split_backbone

    bare = SerialNet(RESNET18, base_width=8).state_dict()
    assert is_bare_backbone(bare)
    assert split_backbone(bare) == ("", bare)
    detector = {f"backbone.bottom_up.{k}": v for k, v in bare.items()}
    detector["backbone.fpn_lateral2.weight"] = torch.zeros(1)
    detector["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(1)
    assert not is_bare_backbone(detector)
    prefix, backbone = split_backbone(detector)
    assert prefix == "backbone.bottom_up."
    assert backbone.keys() == bare.keys()
    assert not is_bare_backbone({})


def test_split_backbone_of_weights_without_a_backbone_names_the_key() -> None:
    from spnas.exceptions import WeightsError
    from spnas.modeling import split_backbone

    with pytest.raises(WeightsError, match=r"no '…stem\.conv1\.weight' key"):
        split_backbone({"head.weight": torch.zeros(1)})
