"""The cost of a code, counted from the code alone (no network built, no torch).

:func:`spnas.modeling.cost` builds the network and traces it with fvcore: exact, but from
0.2 s (ResNet-18) to over 10 s (a ResNet-50 SPNet at 800 px) per code on a CPU. A decision
needs the cost of many codes (FLOPs-inverse sampling, the budget, the ``gmacs`` trial
param) and an input check must know a code's size before building it, so this module counts
the same convolutions with the same conventions: one multiply-add per MAC, convolutions only
(norms, ReLU, additions, pooling and upsampling are free, as in
:mod:`spnas.modeling.flops`). Its GMACs equal :func:`spnas.modeling.cost`'s.
"""

from __future__ import annotations

import dataclasses
import functools

from spnas.arch._parallel import ParallelCode
from spnas.arch._serial import SerialCode


@dataclasses.dataclass(frozen=True)
class CodeCost:
    """What a backbone costs, counted from its code.

    Attributes:
        gmacs: multiply-adds of one forward pass on one image, in billions.
        params: parameters (convolution weights and norm scales and shifts).
        activations: values of the feature maps one forward pass produces (an estimate of
            what training keeps for the backward pass, per image).
        stage_gmacs: GMACs of each stage, subnets and fusions included.
    """

    gmacs: float
    params: int
    activations: int
    stage_gmacs: tuple[float, ...]


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class _Counter:
    def __init__(self) -> None:
        self.macs = 0
        self.params = 0
        self.activations = 0

    def conv(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        size: tuple[int, int],
        groups: int = 1,
        norm: bool = True,
    ) -> tuple[int, int]:
        padding = kernel // 2
        h, w = (_out(s, kernel, stride, padding) for s in size)
        self.macs += cout * h * w * (cin // groups) * kernel * kernel
        self.params += cout * (cin // groups) * kernel * kernel + (2 * cout if norm else 0)
        self.activations += cout * h * w
        return h, w


def _block(
    counter: _Counter,
    block_type: str,
    cin: int,
    width: int,
    stride: int,
    size: tuple[int, int],
    xb_groups: int,
) -> tuple[int, tuple[int, int]]:
    """Count one block (docs/design.md §1); returns its output channels and size."""
    if block_type == "BB":
        cout = width
        out = counter.conv(cin, width, 3, stride, size)
        counter.conv(width, width, 3, 1, out)
    else:
        inner, groups = (2 * width, xb_groups) if block_type == "XB" else (width, 1)
        cout = 4 * width
        counter.conv(cin, inner, 1, 1, size)
        out = counter.conv(inner, inner, 3, stride, size, groups)
        counter.conv(inner, cout, 1, 1, out)
    if cin != cout:
        counter.conv(cin, cout, 1, stride, size)
    return cout, out


def code_cost(
    code: SerialCode | str,
    parallel: ParallelCode | str | None = None,
    *,
    base_width: int = 64,
    stem: str = "resnet",
    input_size: tuple[int, int] = (224, 224),
    xb_groups: int = 32,
) -> CodeCost:
    """Cost of the SerialNet (or, with ``parallel``, the SPNet) of ``code`` on one image.

    Memoised: the search asks for the same codes again and again.
    """
    code = SerialCode.parse(code)
    parallel = None if parallel is None else ParallelCode.parse(parallel)
    return _code_cost(
        code, parallel, int(base_width), stem, (int(input_size[0]), int(input_size[1])), xb_groups
    )


@functools.lru_cache(maxsize=65536)
def _code_cost(
    code: SerialCode,
    parallel: ParallelCode | None,
    base_width: int,
    stem: str,
    size: tuple[int, int],
    xb_groups: int,
) -> CodeCost:
    counter = _Counter()
    if stem == "deep":
        size = counter.conv(3, max(base_width // 2, 1), 3, 2, size)
        size = counter.conv(max(base_width // 2, 1), base_width, 3, 2, size)
    else:
        size = counter.conv(3, base_width, 7, 2, size)
        size = (_out(size[0], 3, 2, 1), _out(size[1], 3, 2, 1))
    channels = base_width
    stage_gmacs = []
    blocks = code.blocks()
    for stage in range(code.num_stages):
        macs, params, activations = counter.macs, counter.params, counter.activations
        stage_in = channels
        for spec in (b for b in blocks if b.stage == stage):
            channels, size = _block(
                counter,
                code.block,
                channels,
                base_width * spec.width_mult,
                spec.stride,
                size,
                xb_groups,
            )
        subnets = parallel[stage] if parallel is not None else 0
        # Each subnet p_l^k repeats the stage on an input of the stage's input shape, after a
        # fusion U_l^k: a 1×1 conv from the stage's output channels to its input channels.
        counter.macs += subnets * (counter.macs - macs)
        counter.params += subnets * (counter.params - params)
        counter.activations += subnets * (counter.activations - activations)
        for _ in range(subnets):
            counter.conv(channels, stage_in, 1, 1, size)
        stage_gmacs.append((counter.macs - macs) / 1e9)
    return CodeCost(
        gmacs=counter.macs / 1e9,
        params=counter.params,
        activations=counter.activations,
        stage_gmacs=tuple(stage_gmacs),
    )
