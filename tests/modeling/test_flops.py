"""Cost of backbones (GMACs, parameters, per-stage allocation) and ``spnas flops``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

from spnas.arch import RESNET18, RESNET50, ParallelCode
from spnas.cli import main
from spnas.modeling import SerialNet, SPNet, cost

REPO = Path(__file__).resolve().parents[2]

# Sums of a handful of float64 GMAC values: rounding is ~1e-16 relative; 1e-6 GMACs (1000
# MACs) is far below one layer's cost and far above rounding.
SUM_TOL = 1e-6

SMALL = "BB(11,d1,d1,d1)"  # ResNet-18 layout at base width 16 on a 64×96 image
SMALL_SIZE = (64, 96)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet50_and_resnet18_gmacs_match_torchvision_figures() -> None:
    # torchvision publishes 4.09 GFLOPS (ResNet-50) and 1.81 (ResNet-18) at 224×224, counting
    # multiply-adds of convs and the fc head (0.002 G), no norms or ReLUs; the ranges allow
    # the head and rounding of the published figure, not a missing or double-counted stage
    # (the smallest stage, ResNet-50's stem, is 0.118 G).
    assert 4.0 <= cost(RESNET50, input_size=(224, 224)).gmacs <= 4.2
    assert 1.75 <= cost(RESNET18, input_size=(224, 224)).gmacs <= 1.85


@pytest.mark.parametrize(("code", "name"), [(RESNET50, "resnet50"), (RESNET18, "resnet18")])
def test_parameters_match_torchvision_without_head(code, name: str) -> None:
    model = getattr(torchvision.models, name)(weights=None)
    body = _params(model) - _params(model.fc)  # 23,508,032 and 11,176,512
    assert round(cost(code).params_m * 1e6) == body


@pytest.mark.parametrize(
    ("code", "parallel", "stem"),
    [
        (RESNET50, None, "resnet"),
        (SMALL, None, "deep"),
        (SMALL, "(1,0,2,1)", "resnet"),
        ("XB(1,d1,d,1,d)", "(0,1,0,3,1)", "deep"),
    ],
)
def test_stages_and_stem_sum_to_total(code, parallel, stem: str) -> None:
    width = 64 if code == RESNET50 else 16
    size = (224, 224) if code == RESNET50 else SMALL_SIZE
    report = cost(code, parallel, base_width=width, stem=stem, input_size=size)
    assert [s.name for s in report.stages] == [f"res{i + 2}" for i in range(len(report.stages))]
    assert report.stem_gmacs > 0 and all(s.gmacs > 0 for s in report.stages)
    assert abs(report.stem_gmacs + sum(s.gmacs for s in report.stages) - report.gmacs) <= SUM_TOL


@pytest.mark.parametrize(("parallel", "stem"), [(None, "resnet"), ("(1,0,2,1)", "deep")])
def test_parameters_equal_the_network_parameters(parallel, stem: str) -> None:
    net = (
        SerialNet(SMALL, base_width=16, stem=stem)
        if parallel is None
        else SPNet(SMALL, parallel, base_width=16, stem=stem)
    )
    report = cost(SMALL, parallel, base_width=16, stem=stem, input_size=SMALL_SIZE)
    assert round(report.params_m * 1e6) == _params(net)
    for stage in report.stages:
        own = sum(_params(m) for n, m in net.named_children() if n.split("_")[0] == stage.name)
        assert round(stage.params_m * 1e6) == own, stage.name
    assert round(sum(s.params_m for s in report.stages) * 1e6) + _params(net.stem) == _params(net)


def test_spnet_extra_cost_lands_in_the_stages_with_subnets() -> None:
    serial = cost(SMALL, base_width=16, input_size=SMALL_SIZE)
    spnet = cost(SMALL, "(1,0,2,1)", base_width=16, input_size=SMALL_SIZE)
    assert spnet.gmacs > serial.gmacs
    assert spnet.params_m > serial.params_m
    assert spnet.stem_gmacs == serial.stem_gmacs
    # Stage l with K subnets costs (1 + K)·s_l plus K fusions, each a 1×1 conv C_l → C_{l-1}
    # at stage l's resolution (nearest upsampling and the addition are free): H_l·W_l·C_l·C_{l-1}.
    h, w = SMALL_SIZE
    channels = {"res2": (16, 16), "res3": (32, 16), "res4": (64, 32), "res5": (128, 64)}
    strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    subnets = {"res2": 1, "res3": 0, "res4": 2, "res5": 1}
    for s_stage, p_stage in zip(serial.stages, spnet.stages, strict=True):
        name, k = s_stage.name, subnets[s_stage.name]
        c, c_prev = channels[name]
        fusion_macs = (h // strides[name]) * (w // strides[name]) * c * c_prev
        fusion_params = c * c_prev + 2 * c_prev  # conv + norm γ, β
        # Equal up to float64 rounding of a division by 1e9.
        assert p_stage.gmacs == pytest.approx((1 + k) * s_stage.gmacs + k * fusion_macs / 1e9)
        assert p_stage.params_m == pytest.approx(
            (1 + k) * s_stage.params_m + k * fusion_params / 1e6
        )
        if k == 0:
            assert p_stage.gmacs == s_stage.gmacs


def test_flops_scale_with_area() -> None:
    base = cost(SMALL, base_width=16, input_size=(64, 96))
    double = cost(SMALL, base_width=16, input_size=(128, 192))
    # Both sizes are multiples of 32, so every layer's output exactly doubles per side: the
    # ratio is 4 up to float64 rounding.
    assert double.gmacs / base.gmacs == pytest.approx(4.0, rel=1e-9)
    # Odd sizes round every stride-2 layer up (ceil), which favours the smaller image: the
    # ratio falls below 4 but stays near it (measured ≈ 3.6 at this size).
    odd = cost(SMALL, base_width=16, input_size=(65, 97))
    odd_double = cost(SMALL, base_width=16, input_size=(130, 194))
    assert 3.0 < odd_double.gmacs / odd.gmacs < 4.0
    assert odd.params_m == odd_double.params_m == base.params_m


def test_cost_is_cached_by_value() -> None:
    first = cost(SMALL, "(0,1,0,0)", base_width=16, input_size=SMALL_SIZE)
    assert cost(SMALL, "(0,1,0,0)", base_width=16, input_size=SMALL_SIZE) is first
    # Equal arguments in other spellings hit the same entry.
    assert (
        cost("BB(11;d1;d1;d1)", ParallelCode((0, 1, 0, 0)), base_width=16, input_size=[64, 96])
        is first
    )
    assert cost(SMALL, "(0,2,0,0)", base_width=16, input_size=SMALL_SIZE) is not first
    assert cost(SMALL, "(0,1,0,0)", base_width=16, input_size=(64, 64)) is not first
    assert cost(SMALL, "(0,1,0,0)", base_width=16, stem="deep", input_size=SMALL_SIZE) is not first


# ---------------------------------------------------------------------------- command line


def test_cli_json(capsys) -> None:
    assert main(["flops", "BNB(111,d111,d11111,d11)", "--input", "224x224", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 4.0 <= data["gmacs"] <= 4.2  # as test_resnet50_and_resnet18_gmacs_match_…
    assert round(data["params_m"] * 1e6) == 23_508_032  # torchvision ResNet-50 without fc
    assert [s["name"] for s in data["stages"]] == ["res2", "res3", "res4", "res5"]
    assert all(isinstance(s["gmacs"], float) and s["gmacs"] > 0 for s in data["stages"])
    assert (
        abs(data["stem_gmacs"] + sum(s["gmacs"] for s in data["stages"]) - data["gmacs"]) <= SUM_TOL
    )


def test_cli_json_with_parallel_code(capsys) -> None:
    args = ["flops", SMALL, "--width", "16", "--input", "64x96", "--json"]
    assert main(args) == 0
    serial = json.loads(capsys.readouterr().out)
    assert main([*args, "--parallel", "(0,0,1,0)"]) == 0
    parallel = json.loads(capsys.readouterr().out)
    assert parallel["gmacs"] > serial["gmacs"]
    grown = [
        p["name"]
        for s, p in zip(serial["stages"], parallel["stages"], strict=True)
        if p["gmacs"] > s["gmacs"]
    ]
    assert grown == ["res4"]


@pytest.mark.parametrize(
    ("code", "names"),
    [
        (SMALL, ["res2", "res3", "res4", "res5"]),
        ("BB(1,d,d,1,d)", ["res2", "res3", "res4", "res5", "res6"]),
    ],
)
def test_cli_table_lists_every_stage(capsys, code: str, names: list[str]) -> None:
    parallel = "(" + ",".join(["1"] + ["0"] * (len(names) - 1)) + ")"
    args = ["flops", code, "--width", "16", "--input", "64x96", "--parallel", parallel]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["stem", *names, "total"]
    assert code in out.splitlines()[0]


def test_cli_bad_code_names_the_column(capsys) -> None:
    assert main(["flops", "BNB(11x1,d111)"]) == 2
    err = capsys.readouterr().err
    assert "column 7" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("size", ["abc", "16x16", "224x224x3", "224by224", ""])
def test_cli_bad_input_size(capsys, size: str) -> None:
    assert main(["flops", SMALL, "--input", size]) == 2
    err = capsys.readouterr().err
    assert f"input size {size!r}" in err


def test_cli_parallel_code_of_wrong_length(capsys) -> None:
    assert main(["flops", "BNB(111,d111,d11111,d11)", "--parallel", "(1,0,0)"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "(1,0,0)" in captured.err and "3 stages" in captured.err and "4" in captured.err


def test_cli_bad_width(capsys) -> None:
    assert main(["flops", SMALL, "--width", "0"]) == 2
    assert "--width 0" in capsys.readouterr().err


def test_console_entry_reports_bad_code_without_traceback() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "spnas", "flops", "BNB(11x1,d111)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    assert "column 7" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
