"""Behaviour of ``SerialCode``: the paper format, derived structure, and error messages."""

from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spnas.arch
from spnas.arch import (
    BLOCK_TYPES,
    EXPANSION,
    RESNET18,
    RESNET34,
    RESNET50,
    RESNET101,
    RESNEXT50,
    RESNEXT101,
    BlockSpec,
    SerialCode,
)
from spnas.exceptions import ArchError, SpnasError

CANONICAL = [
    "BB(1)",
    "BB(11,d1,d1,d1)",
    "BB(111,d111,d11111,d11)",
    "BNB(111,d111,d11111,d11)",
    "BNB(111,d111,d1111111111111111111111,d11)",
    "XB(111,d111,d11111,d11)",
    "BNB(1d,11,d1,1)",
    "BNB(dd,d,1d1,11,1,d)",
    "XB(d)",
]


def _error(text: object) -> str:
    with pytest.raises(ArchError) as info:
        SerialCode.parse(text)  # type: ignore[arg-type]
    return str(info.value)


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text", CANONICAL)
def test_round_trip_of_canonical_strings(text: str) -> None:
    code = SerialCode.parse(text)
    assert str(code) == text
    assert SerialCode.parse(str(code)) == code
    assert repr(code) == f"SerialCode({text!r})"


def test_parse_fields() -> None:
    code = SerialCode.parse("BNB(111,d111,d11111,d11)")
    assert code.block == "BNB"
    assert code.stages == ("111", "d111", "d11111", "d11")
    assert code == SerialCode("BNB", ("111", "d111", "d11111", "d11"))


def test_parse_returns_a_serial_code_unchanged() -> None:
    assert SerialCode.parse(RESNET50) is RESNET50


@pytest.mark.parametrize(
    "text",
    [
        "BNB(111;d111;d11111;d11)",
        "BNB(111,d111;d11111,d11)",
        "BNB(111 , d111 ; d11111 ,d11)",
        "  BNB ( 111,d111,d11111,d11 )  ",
        "BNB(\t111,\nd111,d11111,d11)",
    ],
)
def test_semicolons_and_spaces_are_accepted_and_commas_emitted(text: str) -> None:
    code = SerialCode.parse(text)
    assert code == RESNET50
    assert str(code) == "BNB(111,d111,d11111,d11)"


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_every_block_type_parses(block: str) -> None:
    code = SerialCode.parse(f"{block}(1,d)")
    assert code.block == block
    assert code.expansion == EXPANSION[block]


def test_block_types_and_expansion() -> None:
    assert set(BLOCK_TYPES) == {"BB", "BNB", "XB"}
    assert EXPANSION == {"BB": 1, "BNB": 4, "XB": 4}


# ---------------------------------------------------------------------------- value semantics


def test_equality_and_hashing() -> None:
    a = SerialCode.parse("BNB(111,d111,d11111,d11)")
    b = SerialCode.parse("BNB(111;d111; d11111 ;d11)")
    c = SerialCode.parse("XB(111,d111,d11111,d11)")
    d = SerialCode.parse("BNB(111,d111,d1111,d11)")
    assert a == b and hash(a) == hash(b)
    assert a != c  # same stages, other block type
    assert a != d
    assert a != "BNB(111,d111,d11111,d11)"  # a code is not its string
    assert len({a, b, c, d}) == 3
    table = {a: "resnet50"}
    assert table[b] == "resnet50"
    assert c not in table


def test_codes_are_immutable() -> None:
    code = SerialCode.parse("BB(11,d1,d1,d1)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.block = "BNB"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.stages = ("1",)  # type: ignore[misc]
    assert isinstance(code.stages, tuple)
    spec = code.blocks()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.stride = 2  # type: ignore[misc]


def test_constructor_copies_a_list_into_a_tuple() -> None:
    stages = ["11", "d1"]
    code = SerialCode("BB", stages)  # type: ignore[arg-type]
    stages.append("d")
    assert code.stages == ("11", "d1")
    assert hash(code) == hash(SerialCode("BB", ("11", "d1")))


def test_with_stages_keeps_the_block_type() -> None:
    code = RESNET50.with_stages(["11", "d1", "d1", "d1"])
    assert code == SerialCode.parse("BNB(11,d1,d1,d1)")
    assert RESNET50.num_blocks == 16  # unchanged


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("text", "stages", "blocks", "per_stage", "doublings"),
    [
        ("BB(1)", 1, 1, (1,), 0),
        ("BB(11,d1,d1,d1)", 4, 8, (2, 2, 2, 2), 3),
        ("BNB(111,d111,d11111,d11)", 4, 16, (3, 4, 6, 3), 3),
        ("BNB(1d,11,d1,1)", 4, 7, (2, 2, 2, 1), 2),
        ("XB(dd,d,1d1,11,1,d)", 6, 10, (2, 1, 3, 2, 1, 1), 5),
    ],
)
def test_counts(
    text: str, stages: int, blocks: int, per_stage: tuple[int, ...], doublings: int
) -> None:
    code = SerialCode.parse(text)
    assert code.num_stages == stages
    assert code.num_blocks == blocks
    assert code.blocks_per_stage == per_stage
    assert code.num_doublings == doublings
    assert len(code.blocks()) == blocks
    assert len(code.widths(64)) == blocks
    assert len(code.strides()) == blocks


@pytest.mark.parametrize("num_stages", [1, 4, 5, 7])
def test_stage_names_and_strides(num_stages: int) -> None:
    code = SerialCode("BNB", ("1",) + ("d1",) * (num_stages - 1))
    assert code.stage_names == tuple(f"res{i}" for i in range(2, num_stages + 2))
    assert code.stage_strides() == tuple(4 * 2**i for i in range(num_stages))


def test_stage_names_of_a_seven_stage_code() -> None:
    code = SerialCode.parse("BB(1,d,d,d,1,1,1)")
    assert code.stage_names == ("res2", "res3", "res4", "res5", "res6", "res7", "res8")
    assert code.stage_strides() == (4, 8, 16, 32, 64, 128, 256)


def test_blocks_are_numbered_in_order() -> None:
    code = SerialCode.parse("BNB(111,d111,d11111,d11)")
    specs = code.blocks()
    assert all(isinstance(s, BlockSpec) for s in specs)
    assert [s.position for s in specs] == list(range(16))
    assert [(s.stage, s.index) for s in specs[:5]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [s.stage for s in specs] == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    # The blocks chain: each block's input is the previous block's output.
    assert specs[0].in_mult == 1  # the stem's base_width channels
    for prev, spec in itertools.pairwise(specs):
        assert spec.in_mult == prev.out_mult


# ---------------------------------------------------------------------------- well-known networks


def test_resnet18() -> None:
    code = SerialCode.parse("BB(11,d1,d1,d1)")
    assert code == RESNET18
    assert code.num_blocks == 8
    assert code.blocks_per_stage == (2, 2, 2, 2)
    assert code.stage_channels(64) == (64, 128, 256, 512)
    assert code.stage_strides() == (4, 8, 16, 32)
    assert code.strides() == (1, 1, 2, 1, 2, 1, 2, 1)
    assert code.widths(64) == (64, 64, 128, 128, 256, 256, 512, 512)
    # torchvision's resnet18: layer1 has no downsample; layer2..4 have one on block 0.
    assert [b.has_projection for b in code.blocks()] == [False, False] + [True, False] * 3


def test_resnet34() -> None:
    assert RESNET34.block == "BB"
    assert RESNET34.blocks_per_stage == (3, 4, 6, 3)
    assert RESNET34.stage_channels(64) == (64, 128, 256, 512)


def test_resnet50_matches_torchvision() -> None:
    # The paper's §3.1 text writes ResNet-50 as BNB(111,d111,d1111,d11), but that code has
    # 3-4-5-3 blocks (15); ResNet-50 is 3-4-6-3 (16 blocks, 3·16 + 2 = 50 layers), as the
    # paper's Table 7 and torchvision have it. RESNET50 must be the real network.
    assert SerialCode.parse("BNB(111,d111,d1111,d11)").blocks_per_stage == (3, 4, 5, 3)
    code = SerialCode.parse("BNB(111,d111,d11111,d11)")
    assert code == RESNET50
    assert code.blocks_per_stage == (3, 4, 6, 3)
    assert 3 * code.num_blocks + 2 == 50
    assert code.stage_channels(64) == (256, 512, 1024, 2048)
    assert code.stage_strides() == (4, 8, 16, 32)
    specs = code.blocks()
    # Projection shortcut exactly on the first block of each stage (torchvision's downsample).
    assert [s.position for s in specs if s.has_projection] == [0, 3, 7, 13]
    assert [s.position for s in specs if s.stride == 2] == [3, 7, 13]
    assert code.strides() == (1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1)
    # Inner widths n: 64, 128, 256, 512 per stage; outputs 4n.
    assert code.widths(64) == (64,) * 3 + (128,) * 4 + (256,) * 6 + (512,) * 3
    first = specs[0]
    assert (first.in_mult, first.out_mult, first.width_mult, first.stride) == (1, 4, 1, 1)
    res3 = specs[3]
    assert res3.doubles and (res3.in_mult, res3.out_mult, res3.width_mult) == (4, 8, 2)


def test_resnet101_has_23_blocks_in_stage_3() -> None:
    assert RESNET101.blocks_per_stage == (3, 4, 23, 3)
    assert RESNET101.num_blocks == 33
    assert 3 * RESNET101.num_blocks + 2 == 101
    assert RESNET101.stage_channels(64) == (256, 512, 1024, 2048)
    assert sum(b.has_projection for b in RESNET101.blocks()) == 4


@pytest.mark.parametrize("code", [RESNEXT50, RESNEXT101])
def test_resnext_has_expansion_4(code: SerialCode) -> None:
    assert code.block == "XB"
    assert code.expansion == 4
    assert code.stage_channels(64) == (256, 512, 1024, 2048)
    assert code.stage_channels(32) == (128, 256, 512, 1024)


def test_resnext_depths() -> None:
    assert RESNEXT50.blocks_per_stage == (3, 4, 6, 3)
    assert RESNEXT101.blocks_per_stage == (3, 4, 23, 3)
    assert RESNEXT50.stages == RESNET50.stages
    assert RESNEXT101.stages == RESNET101.stages


def test_doubling_not_at_a_stage_start() -> None:
    code = SerialCode.parse("BB(1d,11,d1,1)")
    specs = code.blocks()
    rows = [
        (s.stage, s.index, s.doubles, s.in_mult, s.out_mult, s.stride, s.has_projection)
        for s in specs
    ]
    assert rows == [
        (0, 0, False, 1, 1, 1, False),
        (0, 1, True, 1, 2, 1, True),  # channels change at the d block, stride 1
        (1, 0, False, 2, 2, 2, False),  # stage start: identity shortcut, stride 2
        (1, 1, False, 2, 2, 1, False),
        (2, 0, True, 2, 4, 2, True),
        (2, 1, False, 4, 4, 1, False),
        (3, 0, False, 4, 4, 2, False),
    ]
    assert code.stage_channels(64) == (128, 128, 256, 256)
    assert code.widths(64) == (64, 128, 128, 128, 256, 256, 256)
    assert code.strides() == (1, 1, 2, 1, 2, 1, 2)


def test_bottleneck_projection_at_first_block_even_without_doubling() -> None:
    # The stem gives C0 = n channels; a bottleneck outputs 4n, so block 0 always projects.
    code = SerialCode.parse("BNB(1,1,1,1)")
    assert [b.has_projection for b in code.blocks()] == [True, False, False, False]
    assert code.stage_channels(64) == (256, 256, 256, 256)
    assert code.strides() == (1, 2, 2, 2)


def test_double_doubling_within_a_stage() -> None:
    code = SerialCode.parse("BB(dd,1)")
    assert code.widths(16) == (32, 64, 64)
    assert [b.width_mult for b in code.blocks()] == [2, 4, 4]
    assert code.stage_channels(16) == (64, 64)


@pytest.mark.parametrize("base", [8, 32, 64])
def test_channels_scale_with_base_width(base: int) -> None:
    assert RESNET50.stage_channels(base) == tuple(base * m for m in (4, 8, 16, 32))
    assert RESNET50.stage_out_mults() == (4, 8, 16, 32)
    assert RESNET18.widths(base)[-1] == 8 * base


# ---------------------------------------------------------------------------- errors


def test_arch_error_is_a_value_error() -> None:
    assert issubclass(ArchError, ValueError)
    assert issubclass(ArchError, SpnasError)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("BNB(11x1,d111)", 7, "unexpected 'x', expected '1' or 'd'"),
        ("BB(1,D1)", 6, "unexpected 'D', expected '1' or 'd'"),
        ("BNB(x)", 5, "unexpected 'x', expected '1' or 'd'"),
        ("BNB(11,,1)", 8, "empty stage"),
        ("BNB()", 5, "empty stage"),
        ("BNB(11,)", 8, "empty stage"),
        ("BNB(;1)", 5, "empty stage"),
        ("BNB(111,d111", 13, "unexpected end of code"),
        ("BNB(111,d111,", 14, "unexpected end of code, expected '1' or 'd'"),
        ("BNB(", 5, "unexpected end of code, expected '1' or 'd'"),
        ("BNB 111)", 5, "unexpected '1', expected '('"),
        ("BNB", 4, "unexpected end of code, expected '('"),
        ("BNB[111]", 4, "unexpected '[', expected '('"),
        ("BXB(111)", 1, "unknown block type 'BXB'"),
        ("  RB(111)", 3, "unknown block type 'RB'"),
        ("(111)", 1, "unexpected '(', expected a block type"),
        ("", 1, "unexpected end of code, expected a block type"),
        ("   ", 4, "unexpected end of code, expected a block type"),
        ("BB(1)x", 6, "unexpected 'x', expected end of code after ')'"),
        ("BB(11,d1) ;", 11, "unexpected ';', expected end of code after ')'"),
        ("BB(1))", 6, "unexpected ')', expected end of code after ')'"),
        ("BNB(11 1)", 8, "unexpected '1', expected ',' or ')'"),
    ],
)
def test_parse_errors_name_input_column_and_expectation(
    text: str, column: int, message: str
) -> None:
    msg = _error(text)
    assert f"{text!r}" in msg
    assert f"column {column}: " in msg
    assert message in msg


def test_example_error_message_in_full() -> None:
    assert _error("BNB(11x1,d111)") == (
        "invalid serial code 'BNB(11x1,d111)': column 7: unexpected 'x', expected '1' or 'd'"
    )


def test_unknown_block_type_lists_the_known_ones() -> None:
    msg = _error("RES(111,d1)")
    assert "unknown block type 'RES'" in msg
    for block in BLOCK_TYPES:
        assert block in msg


@pytest.mark.parametrize("value", [None, 42, 4.0, b"BB(1)", ["BB(1)"]])
def test_non_string_input(value: object) -> None:
    msg = _error(value)
    assert "must be a string" in msg
    assert type(value).__name__ in msg


def test_column_counts_from_the_given_text_including_leading_spaces() -> None:
    msg = _error("   BNB(1x)")
    assert re.search(r"column 9: unexpected 'x'", msg)


@pytest.mark.parametrize(
    ("block", "stages", "message"),
    [
        ("RB", ("1",), "unknown block type 'RB'"),
        ("BB", (), "no stages"),
        ("BB", ("1", ""), "stage 1 of BB code is empty"),
        ("BNB", ("1", "1x"), "stage 1 of BNB code has 'x'"),
    ],
)
def test_constructor_validates(block: str, stages: tuple[str, ...], message: str) -> None:
    with pytest.raises(ArchError, match=re.escape(message)):
        SerialCode(block, stages)


# ---------------------------------------------------------------------------- Vega's format


def test_from_vega_equals_paper_format() -> None:
    code = SerialCode.from_vega("111-2111-211111-211", block="BNB")
    assert code == RESNET50
    assert str(code) == "BNB(111,d111,d11111,d11)"


def test_from_vega_default_block_is_bottleneck() -> None:
    assert SerialCode.from_vega("111-2111-211111-211") == RESNET50


@pytest.mark.parametrize("code", [RESNET18, RESNET50, RESNEXT101, SerialCode.parse("BB(1d,11,dd)")])
def test_to_vega_round_trip(code: SerialCode) -> None:
    vega = code.to_vega()
    assert set(vega) <= {"1", "2", "-"}
    assert vega.count("-") == code.num_stages - 1
    assert SerialCode.from_vega(vega, block=code.block) == code


def test_to_vega_example() -> None:
    assert RESNET50.to_vega() == "111-2111-211111-211"
    assert RESNET18.to_vega() == "11-21-21-21"


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("111-2x11", 6, "unexpected 'x', expected '1', '2' or '-'"),
        ("111-d111", 5, "unexpected 'd'"),
        ("111--211", 5, "empty stage"),
        ("-111", 1, "empty stage"),
        ("111-211-", 9, "empty stage"),
        ("", 1, "empty stage"),
        ("11 1", 3, "unexpected ' '"),
    ],
)
def test_from_vega_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(ArchError) as info:
        SerialCode.from_vega(text, block="BNB")
    msg = str(info.value)
    assert f"{text!r}" in msg
    assert f"column {column}: " in msg
    assert message in msg


def test_from_vega_unknown_block_type() -> None:
    with pytest.raises(ArchError, match="unknown block type 'RB'") as info:
        SerialCode.from_vega("111-211", block="RB")
    assert "'111-211'" in str(info.value)


def test_from_vega_non_string() -> None:
    with pytest.raises(ArchError, match="must be a string"):
        SerialCode.from_vega(111, block="BB")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- no torch


def test_package_does_not_import_torch() -> None:
    script = (
        "import sys\n"
        "import spnas.arch\n"
        "assert spnas.arch.SerialCode.parse('BB(1)').num_blocks == 1\n"
        "print('torch' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "import spnas.arch imported torch"


def test_public_names() -> None:
    for name in spnas.arch.__all__:
        assert hasattr(spnas.arch, name)


def test_a_code_sent_to_another_process_is_found_in_its_sets() -> None:
    """The hash is kept on the code (proposals hash thousands at every decision), but never
    pickled with it: a str's hash differs between processes (PYTHONHASHSEED)."""
    code = SerialCode.parse("BB(11,d1,d11,d1)")
    assert hash(code) == hash(SerialCode.parse("BB(11,d1,d11,d1)"))
    assert dataclasses.replace(code, block="XB") != code
    script = (
        "import pickle, sys\n"
        "from spnas.arch import SerialCode\n"
        "code = pickle.loads(sys.stdin.buffer.read())\n"
        "print(code in {SerialCode('BB', ('11', 'd1', 'd11', 'd1'))})\n"
    )
    for seed in ("1", "2"):
        run = subprocess.run(
            [sys.executable, "-c", script],
            input=pickle.dumps(code),
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert run.stdout.split() == [b"True"], run.stderr.decode()
