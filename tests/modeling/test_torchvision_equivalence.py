"""SerialNet with torchvision weights computes torchvision's ResNet/ResNeXt (docs/design.md §1).

torchvision models are built with ``weights=None`` (random init, no download) and then every
BatchNorm gets random running statistics and affine parameters, so a mix-up of norm tensors
(or a norm applied in the wrong place) changes the output; at torchvision's defaults
(mean 0, var 1, γ 1, β 0) eval-mode BN is almost the identity and would hide such a bug.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from spnas.arch import RESNET18, RESNET34, RESNET50, RESNET101, RESNEXT50, SerialCode
from spnas.exceptions import WeightsError
from spnas.modeling import SerialNet, load_torchvision_resnet

# Both networks run the same float32 kernels on the same tensors in the same order, so with BN
# they agree bit for bit (measured max |Δ| = 0). 1e-5 leaves room for a different kernel choice
# on another machine: outputs are O(1–10) (asserted below), so 1e-5 is ~1e-6 relative, the
# scale of float32 rounding, while any mapping error moves outputs by O(0.1–1).
TOL = 1e-5

# Keeps the outputs O(1–10) so that TOL stays a relative-precision check (with torchvision's
# init and γ ≈ 1 everywhere, ResNet-101's res5 reaches ~1e5, where 1e-5 means "bitwise").
MAX_ACTIVATION = 100.0

CASES = [
    # (torchvision constructor, code, input H×W); ResNet-101 is the heaviest: smaller input.
    ("resnet18", RESNET18, (96, 128)),
    ("resnet34", RESNET34, (96, 128)),
    ("resnet50", RESNET50, (96, 128)),
    ("resnet101", RESNET101, (64, 96)),
    ("resnext50_32x4d", RESNEXT50, (96, 128)),
]


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Random BN statistics and affine parameters; small γ on each residual branch's last BN.

    The small last-γ keeps activations bounded through 33 residual blocks (ResNet-101).
    """
    generator = torch.Generator().manual_seed(seed)
    last = set()
    for module in model.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            last.add(module.bn3)
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            last.add(module.bn2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                low, high = (0.1, 0.4) if module in last else (0.5, 1.5)
                module.weight.uniform_(low, high, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)


def _torchvision(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    _randomise_bn(model, seed + 1)
    return model.eval()


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``layer1..layer4`` outputs of a torchvision ResNet, named ``res2..res5``."""
    y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        y = getattr(model, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _torchvision("resnet18")


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return _torchvision("resnet50")


@pytest.mark.parametrize(("name", "code", "size"), CASES, ids=[c[0] for c in CASES])
def test_res2_to_res5_equal_torchvision_layers(
    name: str, code: SerialCode, size: tuple[int, int]
) -> None:
    model = _torchvision(name)
    torch.manual_seed(10)
    x = torch.randn(2, 3, *size)
    net = load_torchvision_resnet(SerialNet(code), model.state_dict()).eval()
    with torch.no_grad():
        expected = _torchvision_features(model, x)
        actual = net(x)
    assert list(actual) == ["res2", "res3", "res4", "res5"]
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert expected[key].abs().max().item() < MAX_ACTIVATION, key
    assert _max_diff(actual, expected) <= TOL


def test_comparison_detects_a_wrong_norm_tensor(resnet18: nn.Module) -> None:
    """Negative control: the BN statistics matter, so the equivalence test can fail."""
    torch.manual_seed(11)
    x = torch.randn(2, 3, 96, 128)
    net = load_torchvision_resnet(SerialNet(RESNET18), resnet18.state_dict()).eval()
    with torch.no_grad():
        expected = _torchvision_features(resnet18, x)
        assert _max_diff(net(x), expected) <= TOL
        # torchvision's default running_var of 1 instead of the randomised one, in one block.
        net.res4[1].norm1.running_var.fill_(1.0)
        broken = net(x)
    assert (broken["res3"] - expected["res3"]).abs().max().item() <= TOL  # upstream unchanged
    # 1e-2 is 1000× TOL: the perturbation must be far outside the rounding band.
    assert (broken["res4"] - expected["res4"]).abs().max().item() > 1e-2


def test_unloaded_net_differs(resnet18: nn.Module) -> None:
    """Negative control: a randomly initialised SerialNet does not pass by accident."""
    torch.manual_seed(12)
    x = torch.randn(2, 3, 96, 128)
    net = SerialNet(RESNET18).eval()
    with torch.no_grad():
        assert _max_diff(net(x), _torchvision_features(resnet18, x)) > 1e-2


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model"])
def test_load_from_file_path(tmp_path, resnet18: nn.Module, wrap: str) -> None:
    state = resnet18.state_dict()
    obj = state if wrap == "bare" else {wrap: state}
    path = tmp_path / "r18.pth"
    torch.save(obj, path)
    torch.manual_seed(13)
    x = torch.randn(2, 3, 96, 128)
    for source in (path, str(path)):
        net = load_torchvision_resnet(SerialNet(RESNET18), source).eval()
        with torch.no_grad():
            assert _max_diff(net(x), _torchvision_features(resnet18, x)) <= TOL


def test_missing_file_raises_weights_error(tmp_path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"nope\.pth"):
        load_torchvision_resnet(SerialNet(RESNET18, base_width=16), path)


def test_resnet50_weights_into_3_4_5_3_code_name_the_extra_key(resnet50: nn.Module) -> None:
    # The paper's text writes ResNet-50 as BNB(111,d111,d1111,d11): 3-4-5-3 blocks.
    net = SerialNet("BNB(111,d111,d1111,d11)")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightsError, match=r"layer3\.5\."):
        load_torchvision_resnet(net, resnet50.state_dict())
    # Nothing is copied when the weights do not fit.
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resnet50_weights_into_longer_code_name_the_missing_key(resnet50: nn.Module) -> None:
    net = SerialNet("BNB(111,d111,d111111,d11)")  # 3-4-7-3
    with pytest.raises(WeightsError, match=r"res4\.6\."):
        load_torchvision_resnet(net, resnet50.state_dict())


def test_resnet50_weights_into_resnext_code_name_the_shape_mismatch(
    resnet50: nn.Module,
) -> None:
    # Same keys, but XB's inner width is 2n: conv1 of the first block has another shape.
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight"):
        load_torchvision_resnet(SerialNet(RESNEXT50), resnet50.state_dict())


def test_torchvision_weights_need_the_resnet_stem(resnet18: nn.Module) -> None:
    with pytest.raises(WeightsError, match=r"conv1\.weight"):
        load_torchvision_resnet(SerialNet(RESNET18, stem="deep"), resnet18.state_dict())


def test_frozen_bn_net_loads_and_matches(resnet50: nn.Module) -> None:
    state = resnet50.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    net = SerialNet(RESNET50, norm="FrozenBN")
    assert isinstance(net.res3[0].norm2, FrozenBatchNorm2d)
    assert not any(k.endswith("num_batches_tracked") for k in net.state_dict())
    load_torchvision_resnet(net, state)
    torch.manual_seed(14)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = _torchvision_features(resnet50, x)
        actual = net.eval()(x)
        # FrozenBN ignores the mode: train mode computes the same function.
        actual_train = net.train()(x)
    # FrozenBN computes x·(γ/√(σ²+ε)) + (β − μ·γ/√(σ²+ε)), a different rounding order from
    # F.batch_norm, so it is not bitwise equal; measured max |Δ| ≈ 2.4e-6 at outputs ≤ 5 over
    # 53 norm layers (float32 ε ≈ 1.2e-7 per op), so TOL still holds with a 4× margin.
    assert _max_diff(actual, expected) <= TOL
    assert _max_diff(actual_train, actual) == 0.0
