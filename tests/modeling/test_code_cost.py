"""``spnas.arch.code_cost`` counts from the code what fvcore counts on the built network."""

from __future__ import annotations

import time

import pytest

from spnas.arch import code_cost
from spnas.modeling import SerialNet, SPNet, cost


@pytest.mark.parametrize(
    ("code", "parallel", "stem", "size", "width"),
    [
        ("BNB(111,d111,d11111,d11)", None, "resnet", (224, 224), 64),
        ("BB(11,d1,d1,d1)", "(1,0,2,1)", "deep", (97, 131), 16),
        ("XB(11,d1,d11,d1)", "(1,0,2,1)", "resnet", (64, 64), 32),
        ("BNB(1,d11,1d1,d1,1)", "(0,2,1,3,1)", "resnet", (100, 80), 8),
        ("BB(11,d1,d1,d1)", "(0,0,0,0)", "resnet", (64, 64), 8),
    ],
)
def test_code_cost_equals_fvcore_and_the_built_network(
    code: str, parallel: str | None, stem: str, size: tuple[int, int], width: int
) -> None:
    counted = code_cost(code, parallel, base_width=width, stem=stem, input_size=size)
    traced = cost(code, parallel, base_width=width, stem=stem, input_size=size)
    assert counted.gmacs == pytest.approx(traced.gmacs, rel=1e-12)
    assert counted.stage_gmacs == pytest.approx([s.gmacs for s in traced.stages], rel=1e-12)
    net = SPNet(code, parallel, base_width=width, stem=stem) if parallel else None
    net = net or SerialNet(code, base_width=width, stem=stem)
    assert counted.params == sum(p.numel() for p in net.parameters())


def test_code_cost_of_a_huge_code_takes_no_memory_and_no_time() -> None:
    started = time.perf_counter()
    huge = code_cost("BNB(111,d111,d11111,d11)", base_width=4096, input_size=(1333, 1333))
    assert time.perf_counter() - started < 0.5
    assert huge.params > 10**10  # about 90 GB of float32 weights: never built
