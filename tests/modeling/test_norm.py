"""``rescale_normalized_convs``: the same function, the weight scale of a fresh initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spnas.modeling import SerialNet, rescale_normalized_convs
from spnas.modeling.norm import init_weight_rms

CODE = "BNB(1,d1,d1)"


def grown(norm: str, stem: str = "resnet") -> SerialNet:
    """A network whose convolutions grew 2–12× unevenly, as training at a high learning rate
    leaves them, with norm statistics that fit them (running averages over random images)."""
    torch.manual_seed(0)
    net = SerialNet(CODE, base_width=8, norm="BN" if norm == "FrozenBN" else norm, stem=stem)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                factors = torch.empty(module.out_channels).uniform_(2, 12)
                module.weight.mul_(factors.view(-1, 1, 1, 1))
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative averages
        net.train()
        for _ in range(4):
            net(torch.randn(8, 3, 64, 64))
    if norm == "FrozenBN":
        frozen = SerialNet(CODE, base_width=8, norm="FrozenBN", stem=stem)
        frozen.load_state_dict(net.state_dict(), strict=False)
        return frozen
    return net


def outputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize(
    ("norm", "stem", "train"),
    [
        ("BN", "resnet", True),
        ("BN", "deep", False),
        ("FrozenBN", "resnet", False),
        ("GN", "resnet", True),
    ],
)
def test_the_function_is_unchanged(norm: str, stem: str, train: bool) -> None:
    """In train mode (batch statistics) and eval mode (running ones), up to the norms' eps:
    the smaller weights give smaller pre-norm variances, to which eps (1e-5) is added, so
    outputs move by up to 1e-3 of their largest value (measured; the same in float64)."""
    net = grown(norm, stem).train(train)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0  # train-mode forwards leave the statistics alone
    x = torch.randn(4, 3, 64, 64)
    before = outputs(net, x)
    rescaled = rescale_normalized_convs(net)
    after = outputs(net, x)
    assert rescaled == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    for name, value in before.items():
        assert torch.allclose(after[name], value, atol=2e-3 * value.abs().max()), name


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_weights_get_the_scale_of_a_fresh_initialisation(norm: str) -> None:
    net = grown(norm)
    fresh = SerialNet(CODE, base_width=8, norm=norm)
    rescale_normalized_convs(net)
    for (name, conv), fresh_conv in zip(
        ((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)),
        (m for m in fresh.modules() if isinstance(m, nn.Conv2d)),
        strict=True,
    ):
        target = init_weight_rms(conv)
        if norm == "GN":
            rms = conv.weight.pow(2).mean().sqrt()
        else:
            rms = conv.weight.flatten(1).pow(2).mean(1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, target), rtol=1e-5), name
        # The target is what PyTorch's default initialisation gives (within sampling).
        fresh_rms = float(fresh_conv.weight.detach().pow(2).mean().sqrt())
        assert fresh_rms == pytest.approx(target, rel=0.1), name


def test_all_zero_channels_stay_zero() -> None:
    net = grown("BN")
    with torch.no_grad():
        net.stem.conv1.weight[0].zero_()
    rescale_normalized_convs(net)
    assert torch.count_nonzero(net.stem.conv1.weight[0]) == 0
    assert torch.isfinite(net.stem.norm1.running_var).all()
