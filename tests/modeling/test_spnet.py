"""Behaviour of ``SPNet``: parallel subnets that start as an exact identity (docs/design.md §3)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from spnas.exceptions import ArchError
from spnas.modeling import SerialNet, SPNet

# At insertion every subnet computes p(x_{l-1} + 0) with a copy of s_l's tensors, i.e. the same
# kernels on the same input, so SPNet and SerialNet agree bit for bit (measured max |Δ| = 0 in
# eval and train mode). 1e-5 is float32 rounding at outputs of O(1) and allows another kernel
# choice; a wrong subnet or a live fusion moves outputs by O(0.1–1) (asserted below).
TOL = 1e-5
# A change this large is far outside the rounding band: "the output really changed".
CHANGED = 1e-3


def _randomise_norms(net: nn.Module, seed: int) -> None:
    """Non-trivial norm statistics and affine parameters, so eval-mode norms matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)


def _serial(code: str, stem: str = "resnet", norm: str = "BN", seed: int = 0, **kw) -> SerialNet:
    torch.manual_seed(seed)
    net = SerialNet(code, base_width=16, stem=stem, norm=norm, **kw)
    _randomise_norms(net, seed + 1)
    return net


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _run(net: nn.Module, x: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net.train(train)(x)


@pytest.mark.parametrize(
    "code",
    ["BB(11,d1,d1,d1)", "BNB(1,d1,d1,d1)", "XB(1,d1,d1,d1)", "BB(1,d1,d,1,d)"],
)
@pytest.mark.parametrize("stem", ["resnet", "deep"])
def test_all_zero_parallel_code_has_serialnet_state_dict(code: str, stem: str) -> None:
    serial = SerialNet(code, base_width=16, stem=stem)
    zeros = "(" + ",".join("0" * serial.code.num_stages) + ")"
    for spnet in (
        SPNet(code, zeros, base_width=16, stem=stem),
        SPNet(code, base_width=16, stem=stem),
    ):
        assert list(spnet.state_dict()) == list(serial.state_dict())
        assert str(spnet.parallel) == zeros
    spnet = SPNet(code, zeros, base_width=16, stem=stem)
    spnet.load_state_dict(serial.state_dict())  # strict: same keys, same shapes
    x = torch.randn(2, 3, 64, 96)
    assert _max_diff(_run(spnet, x, False), _run(serial, x, False)) == 0.0


EQUIVALENCE = [
    ("BB(11,d1,d1,d1)", "(1,0,2,1)", "resnet"),
    ("BB(11,d1,d1,d1)", "(3,3,3,3)", "deep"),
    ("BNB(1,d1,d1,d1)", "(0,0,0,1)", "resnet"),
    ("BNB(1,d1,d1,d1)", "(1,0,2,1)", "deep"),
    ("XB(1,d1,d1,d1)", "(3,3,3,3)", "resnet"),
    ("XB(1,d1,d1,d1)", "(0,0,0,1)", "deep"),
    # res3.0 has a stride-2 identity shortcut; a 5-stage code.
    ("BB(1,1,d1)", "(2,1,1)", "resnet"),
    ("BB(1,d1,d,1,d)", "(1,0,1,0,2)", "deep"),
]


@pytest.mark.parametrize(("code", "parallel", "stem"), EQUIVALENCE)
@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_from_serialnet_preserves_function(
    code: str, parallel: str, stem: str, size: tuple[int, int]
) -> None:
    serial = _serial(code, stem)
    spnet = SPNet.from_serialnet(serial, parallel)
    assert str(spnet.parallel) == parallel
    torch.manual_seed(7)
    x = torch.randn(2, 3, *size)
    # Eval mode: running statistics (randomised, so the norms are not near-identity).
    expected = _run(serial, x, False)
    assert max(v.abs().max().item() for v in expected.values()) > CHANGED
    assert _max_diff(_run(spnet, x, False), expected) <= TOL
    # Train mode: batch statistics; subnets see the same input as their stage, fusions add 0.
    expected = _run(serial, x, True)
    assert _max_diff(_run(spnet, x, True), expected) <= TOL


@pytest.mark.parametrize("norm", ["FrozenBN", "GN"])
def test_from_serialnet_preserves_function_with_other_norms(norm: str) -> None:
    serial = _serial("BB(11,d1,d1,d1)", norm=norm)
    spnet = SPNet.from_serialnet(serial, "(1,2,0,1)")
    assert isinstance(spnet.res3_u1.norm, type(serial.res3[0].norm1))
    x = torch.randn(2, 3, 65, 97)
    for train in (False, True):
        assert _max_diff(_run(spnet, x, train), _run(serial, x, train)) <= TOL


def test_from_serialnet_keeps_in_channels_and_out_features() -> None:
    # Regression: from_serialnet built a 3-channel stem whatever the SerialNet had.
    serial = _serial("BB(1,d1,d1)", in_channels=1, out_features=["res2", "res4"])
    spnet = SPNet.from_serialnet(serial, "(1,1,0)")
    assert spnet.out_features == ("res2", "res4")
    x = torch.randn(2, 1, 64, 96)
    assert _max_diff(_run(spnet, x, False), _run(serial, x, False)) <= TOL


def test_subnets_without_copied_weights_change_the_function() -> None:
    """Negative control: the equivalence above is due to the copy, not a dead code path."""
    serial = _serial("BB(11,d1,d1,d1)")
    torch.manual_seed(99)
    spnet = SPNet("BB(11,d1,d1,d1)", "(0,1,0,0)", base_width=16)
    spnet.load_state_dict(serial.state_dict(), strict=False)  # subnet keeps its own random init
    x = torch.randn(2, 3, 64, 96)
    out, ref = _run(spnet, x, False), _run(serial, x, False)
    assert (out["res2"] - ref["res2"]).abs().max().item() <= TOL
    assert (out["res3"] - ref["res3"]).abs().max().item() > CHANGED


def test_subnet_tensors_are_distinct_copies() -> None:
    serial = _serial("BB(11,d1,d1,d1)")
    spnet = SPNet.from_serialnet(serial, "(0,2,0,0)").eval()
    stage = spnet.res3.state_dict()
    for k in (1, 2):
        subnet = getattr(spnet, f"res3_p{k}").state_dict()
        assert list(subnet) == list(stage)
        for key, tensor in subnet.items():
            assert torch.equal(tensor, stage[key]), key
            assert tensor.data_ptr() != stage[key].data_ptr(), key
    assert spnet.res3_p1.state_dict()["0.conv1.weight"].data_ptr() != (
        spnet.res3_p2.state_dict()["0.conv1.weight"].data_ptr()
    )
    # from_serialnet copies: the source SerialNet shares nothing with the SPNet either.
    assert spnet.res3[0].conv1.weight.data_ptr() != serial.res3[0].conv1.weight.data_ptr()

    x = torch.randn(2, 3, 64, 96)
    before = _run(spnet, x, False)
    stage_weight = spnet.res3[0].conv1.weight.detach().clone()
    with torch.no_grad():
        spnet.res3_p2[0].conv1.weight.add_(0.5)
    assert torch.equal(spnet.res3[0].conv1.weight, stage_weight)
    assert torch.equal(spnet.res3_p1[0].conv1.weight, stage_weight)
    after = _run(spnet, x, False)
    assert (after["res3"] - before["res3"]).abs().max().item() > CHANGED


def test_fusion_path_is_live() -> None:
    serial = _serial("BB(11,d1,d1,d1)")
    spnet = SPNet.from_serialnet(serial, "(1,0,2,1)").eval()
    x = torch.randn(2, 3, 96, 128)
    before = _run(spnet, x, False)
    with torch.no_grad():
        spnet.res4_u2.norm.weight.fill_(1.0)
    after = _run(spnet, x, False)
    # Upstream stages are untouched; res4 and everything after it change.
    assert (
        _max_diff({k: after[k] for k in ("res2", "res3")}, {k: before[k] for k in ("res2", "res3")})
        == 0.0
    )
    assert (after["res4"] - before["res4"]).abs().max().item() > CHANGED
    assert (after["res5"] - before["res5"]).abs().max().item() > CHANGED
    # The first stage's fusion works at stride 1 (C_0 = base width, no upsampling).
    with torch.no_grad():
        spnet.res2_u1.norm.bias.fill_(0.5)
    assert (_run(spnet, x, False)["res2"] - before["res2"]).abs().max().item() > CHANGED


def test_open_fusion_computes_the_design_formula() -> None:
    """x_l^k = p_l^k(x_{l-1} + U_l^k(x_l^{k-1})), U = nearest ×2 ∘ norm ∘ 1×1 conv (docs/design.md §3)."""
    serial = _serial("BB(11,d1,d1,d1)")
    spnet = SPNet.from_serialnet(serial, "(0,0,2,0)").eval()
    torch.manual_seed(10)
    with torch.no_grad():
        for k in (1, 2):
            fusion = getattr(spnet, f"res4_u{k}")
            fusion.norm.weight.uniform_(0.5, 1.5)
            fusion.norm.bias.normal_(0.0, 0.2)
            getattr(spnet, f"res4_p{k}")[0].conv1.weight.mul_(1.0 + 0.1 * k)  # distinct subnets
        x = torch.randn(2, 3, 64, 96)
        out = spnet(x)
        prev = spnet.res3(spnet.res2(spnet.stem(x)))  # x_{l-1}, 8×12
        state = spnet.res4(prev)  # x_l^0, 4×6
        for k in (1, 2):
            fusion = getattr(spnet, f"res4_u{k}")
            fused = fusion.norm(fusion.conv(state))
            up = fused.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
            state = getattr(spnet, f"res4_p{k}")(prev + up)
        assert (out["res4"] - state).abs().max().item() <= TOL
        assert (out["res4"] - serial.eval()(x)["res4"]).abs().max().item() > CHANGED


def test_copy_stages_to_subnets_restores_identity() -> None:
    serial = _serial("BNB(1,d1,d1,d1)")
    spnet = SPNet.from_serialnet(serial, "(1,1,1,1)")
    with torch.no_grad():
        for name, p in spnet.named_parameters():
            if re.match(r"res\d+_[pu]\d", name):
                p.add_(0.3)
    x = torch.randn(2, 3, 64, 96)
    assert _max_diff(_run(spnet, x, False), _run(serial, x, False)) > CHANGED
    spnet.copy_stages_to_subnets()
    assert _max_diff(_run(spnet, x, False), _run(serial, x, False)) <= TOL


def test_module_names() -> None:
    spnet = SPNet("BB(11,d1,d1,d1)", "(1,0,2,1)", base_width=16)
    assert {n for n, _ in spnet.named_children()} == {
        "stem",
        "res2",
        "res3",
        "res4",
        "res5",
        "res2_p1",
        "res2_u1",
        "res4_p1",
        "res4_u1",
        "res4_p2",
        "res4_u2",
        "res5_p1",
        "res5_u1",
    }
    params = dict(spnet.named_parameters())
    for name in params:
        assert re.match(
            r"^(stem|res\d+)\.|^res\d+_p\d+\.\d+\.|^res\d+_u\d+\.(conv|norm)\.", name
        ), name
    for fusion in ("res2_u1", "res4_u1", "res4_u2", "res5_u1"):
        assert {n for n, _ in getattr(spnet, fusion).named_parameters()} == {
            "conv.weight",
            "norm.weight",
            "norm.bias",
        }
    # U_l^k: 1×1 conv C_l → C_{l-1}; for the first stage C_{l-1} is the stem's base width.
    assert params["res2_u1.conv.weight"].shape == (16, 16, 1, 1)
    assert params["res4_u2.conv.weight"].shape == (32, 64, 1, 1)
    assert params["res5_u1.conv.weight"].shape == (64, 128, 1, 1)
    stage = {n.removeprefix("res4.") for n in params if n.startswith("res4.")}
    for k in (1, 2):
        assert {
            n.removeprefix(f"res4_p{k}.") for n in params if n.startswith(f"res4_p{k}.")
        } == stage


def test_fusion_norms_start_at_zero() -> None:
    spnet = SPNet("BNB(1,d1,d1,d1)", "(1,1,1,1)", base_width=16)
    for name, module in spnet.named_children():
        if "_u" in name:
            assert torch.count_nonzero(module.norm.weight) == 0
            assert torch.count_nonzero(module.norm.bias) == 0


@pytest.mark.parametrize("parallel", ["(1,0,0)", "(1,0,0,0,0)", "(2)"])
def test_parallel_code_of_wrong_length_raises(parallel: str) -> None:
    with pytest.raises(ArchError, match=re.escape(parallel)) as info:
        SPNet("BB(1,d1,d1,d1)", parallel, base_width=16)
    assert "4" in str(info.value)
    with pytest.raises(ArchError, match=re.escape(parallel)):
        SPNet.from_serialnet(SerialNet("BB(1,d1,d1,d1)", base_width=16), parallel)


def test_gradients_at_insertion_reach_the_last_fusion_gate() -> None:
    """At insertion only the last gate of each stage can learn; it then opens the rest.

    With γ = β = 0 in every U_l^k, the output of a stage is x_l^{K_l}, and x_l^{k<K_l} reaches
    it only through U_l^{k+1}, whose γ = 0 blocks the gradient. So exactly U_l^{K_l}'s γ/β and
    p_l^{K_l} receive gradient; s_l, the earlier subnets and the earlier gates get exactly 0.
    """
    torch.manual_seed(8)
    spnet = SPNet.from_serialnet(_serial("BB(11,d1,d1,d1)"), "(1,0,2,1)").train()
    out = spnet(torch.randn(2, 3, 64, 96))
    sum(o.square().mean() for o in out.values()).backward()

    def grad_sum(module: nn.Module) -> float:
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    for last in ("res2_u1", "res4_u2", "res5_u1"):
        module = getattr(spnet, last)
        assert module.norm.weight.grad.abs().sum() > 0, last
        assert module.norm.bias.grad.abs().sum() > 0, last
        assert grad_sum(module.conv) == 0.0, last  # behind γ = 0
    for name in ("res2_p1", "res4_p2", "res5_p1", "res3"):  # res3 has no subnets
        assert all(p.grad.abs().sum() > 0 for p in getattr(spnet, name).parameters()), name
    for blocked in ("res2", "res4", "res5", "res4_p1", "res4_u1"):
        assert grad_sum(getattr(spnet, blocked)) == 0.0, blocked


def test_gradients_flow_everywhere_once_fusion_is_open() -> None:
    torch.manual_seed(9)
    spnet = SPNet.from_serialnet(_serial("BNB(1,d1,d1,d1)"), "(1,0,2,1)").train()
    with torch.no_grad():
        for name, module in spnet.named_children():
            if "_u" in name:
                module.norm.weight.fill_(0.5)
    out = spnet(torch.randn(2, 3, 64, 96))
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in spnet.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
