"""Behaviour of ``SearchSpace``: the paper's bounds, validation messages, configuration."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from spnas.arch import (
    BLOCK_TYPES,
    RESNET18,
    RESNET50,
    RESNET101,
    RESNEXT101,
    ParallelCode,
    SearchSpace,
    SerialCode,
)
from spnas.exceptions import ArchError, ConfigError

DEFAULT = SearchSpace()


def _violation(space: SearchSpace, text: str) -> str:
    with pytest.raises(ArchError) as info:
        space.validate(text)
    return str(info.value)


# ---------------------------------------------------------------------------- defaults


def test_defaults_are_the_papers() -> None:
    assert DEFAULT.min_blocks == 8
    assert DEFAULT.max_blocks == 60
    assert DEFAULT.min_stages == 4
    assert DEFAULT.max_stages == 7
    assert DEFAULT.min_blocks_per_stage == 1
    assert DEFAULT.max_subnets == 3
    assert DEFAULT.max_doublings is None
    assert DEFAULT.block_types == BLOCK_TYPES


@pytest.mark.parametrize("code", [RESNET18, RESNET50, RESNET101, RESNEXT101])
def test_well_known_networks_lie_in_the_default_space(code: SerialCode) -> None:
    assert DEFAULT.contains(code)
    assert DEFAULT.violation(code) is None
    assert DEFAULT.validate(code) is code


def test_validate_parses_strings_and_returns_the_code() -> None:
    code = DEFAULT.validate("BNB(111;d111;d11111;d11)")
    assert isinstance(code, SerialCode)
    assert code == RESNET50


def test_space_is_immutable_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.max_blocks = 10  # type: ignore[misc]
    assert SearchSpace() == DEFAULT
    assert hash(SearchSpace()) == hash(DEFAULT)


# ---------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        ("BB(11,d1,d1,d1)", True),  # 8 blocks: the lower bound
        ("BB(11,d1,d1,d)", False),  # 7 blocks
        ("BB(" + "1" * 57 + ",d,d,d)", True),  # 60 blocks: the upper bound
        ("BB(" + "1" * 58 + ",d,d,d)", False),  # 61 blocks
        ("BB(1111,d11,d11)", False),  # 3 stages
        ("BB(11,d1,d1,d1,1,1,1)", True),  # 7 stages
        ("BB(11,d1,d1,d1,1,1,1,1)", False),  # 8 stages
        ("BNB(11111111,d,d,d)", True),  # 1 block in a stage
    ],
)
def test_contains_at_the_bounds(text: str, inside: bool) -> None:
    code = SerialCode.parse(text)
    assert DEFAULT.contains(code) is inside
    assert (DEFAULT.violation(code) is None) is inside


@pytest.mark.parametrize(
    ("space", "text", "bound", "detail"),
    [
        (DEFAULT, "BB(11,d1,d1,d)", "min_blocks/max_blocks", "7 blocks, expected 8 to 60"),
        (
            DEFAULT,
            "BB(" + "1" * 58 + ",d,d,d)",
            "min_blocks/max_blocks",
            "61 blocks, expected 8 to 60",
        ),
        (DEFAULT, "BB(1111,d11,d11)", "min_stages/max_stages", "3 stages, expected 4 to 7"),
        (
            DEFAULT,
            "BB(11,d1,d1,d1,1,1,1,1)",
            "min_stages/max_stages",
            "8 stages, expected 4 to 7",
        ),
        (
            SearchSpace(min_blocks_per_stage=2),
            "BB(111,d111,d,d1)",
            "min_blocks_per_stage",
            "stage 2 has 1 block(s), expected at least 2",
        ),
        (
            SearchSpace(max_doublings=3),
            "BB(1d,d1,d1,d1)",
            "max_doublings",
            "4 doublings, expected at most 3",
        ),
        (
            SearchSpace(block_types=("BNB",)),
            "BB(11,d1,d1,d1)",
            "block type",
            "block type BB is not among BNB",
        ),
    ],
)
def test_validate_names_the_code_and_the_violated_bound(
    space: SearchSpace, text: str, bound: str, detail: str
) -> None:
    msg = _violation(space, text)
    assert msg.startswith(f"{SerialCode.parse(text)} is outside the search space: ")
    assert bound in msg
    assert detail in msg
    assert not space.contains(SerialCode.parse(text))


def test_max_doublings_at_the_bound_is_allowed() -> None:
    space = SearchSpace(max_doublings=3)
    assert space.contains(RESNET50)
    assert SearchSpace(max_doublings=0).violation(RESNET50) is not None
    assert SearchSpace(max_doublings=0).contains(SerialCode.parse("BB(11,1,1,1111)"))


def test_custom_bounds() -> None:
    space = SearchSpace(min_blocks=2, max_blocks=4, min_stages=1, max_stages=2)
    assert space.contains(SerialCode.parse("XB(11,d1)"))
    assert space.contains(SerialCode.parse("XB(11)"))
    assert not space.contains(SerialCode.parse("XB(1)"))
    assert not space.contains(SerialCode.parse("XB(11,d1,1)"))


def test_validate_propagates_parse_errors() -> None:
    with pytest.raises(ArchError, match="column 7: unexpected 'x'"):
        DEFAULT.validate("BNB(11x1,d111)")


# ---------------------------------------------------------------------------- parallel


@pytest.mark.parametrize("text", ["(0,0,0,0)", "(0,2,1,3)", "3,3,3,3", "(3;0;0;1)"])
def test_validate_parallel_accepts(text: str) -> None:
    code = DEFAULT.validate_parallel(text, RESNET50)
    assert code == ParallelCode.parse(text)


def test_validate_parallel_accepts_codes_and_strings() -> None:
    parallel = ParallelCode((0, 1, 0, 0))
    assert DEFAULT.validate_parallel(parallel, "BB(11,d1,d1,d1)") is parallel


def test_validate_parallel_length_mismatch() -> None:
    with pytest.raises(ArchError) as info:
        DEFAULT.validate_parallel("(0,2,1)", RESNET50)
    msg = str(info.value)
    assert "(0,2,1)" in msg
    assert "3 stages, expected 4" in msg
    assert str(RESNET50) in msg


def test_validate_parallel_over_max_subnets() -> None:
    with pytest.raises(ArchError) as info:
        DEFAULT.validate_parallel("(0,4,1,3)", RESNET50)
    msg = str(info.value)
    assert "(0,4,1,3)" in msg
    assert "stage 1 has 4 subnets, expected at most 3 (max_subnets)" in msg
    assert SearchSpace(max_subnets=4).validate_parallel("(0,4,1,3)", RESNET50).total == 8
    with pytest.raises(ArchError, match="max_subnets"):
        SearchSpace(max_subnets=0).validate_parallel("(0,0,1,0)", RESNET50)


def test_validate_parallel_propagates_parse_errors() -> None:
    with pytest.raises(ArchError, match="column 4"):
        DEFAULT.validate_parallel("(0,x,1,1)", RESNET50)
    with pytest.raises(ArchError, match="column 5"):
        DEFAULT.validate_parallel("(0,0,0,0)", "BNB(x)")


# ---------------------------------------------------------------------------- configuration


def test_from_dict_with_no_keys_gives_defaults() -> None:
    assert SearchSpace.from_dict({}) == DEFAULT


def test_from_dict_sets_fields() -> None:
    space = SearchSpace.from_dict(
        {"min_blocks": 10, "max_stages": 6, "max_doublings": 3, "block_types": ["BNB", "XB"]}
    )
    assert space.min_blocks == 10
    assert space.max_stages == 6
    assert space.max_doublings == 3
    assert space.block_types == ("BNB", "XB")


def test_from_dict_unknown_key_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict({"min_blocks": 8, "max_block": 50})
    msg = str(info.value)
    assert "unknown key 'space.max_block'" in msg
    assert "max_blocks" in msg  # the known keys are listed


def test_from_dict_where_prefixes_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'study\.space\.K'"):
        SearchSpace.from_dict({"K": 3}, where="study.space")


@pytest.mark.parametrize(
    "space",
    [
        DEFAULT,
        SearchSpace(min_blocks=10, max_blocks=40, max_doublings=4, block_types=("BNB",)),
        SearchSpace(min_stages=5, max_stages=5, min_blocks_per_stage=2, max_subnets=1),
    ],
)
def test_to_dict_from_dict_round_trip(space: SearchSpace) -> None:
    values = space.to_dict()
    assert set(values) == {f.name for f in dataclasses.fields(SearchSpace)}
    assert isinstance(values["block_types"], list)  # plain YAML/JSON types
    assert SearchSpace.from_dict(values) == space


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"min_blocks": 61}, "min_blocks"),  # 61 > max_blocks 60
        ({"min_blocks": -1}, "min_blocks"),
        ({"max_blocks": "60"}, "max_blocks"),
        ({"max_blocks": 60.0}, "max_blocks"),
        ({"min_stages": True}, "min_stages"),
        ({"min_stages": 0}, "min_stages"),
        ({"min_stages": 5, "max_stages": 4}, "max_stages"),
        ({"max_subnets": -1}, "max_subnets"),
        ({"min_blocks_per_stage": 0}, "min_blocks_per_stage"),
        ({"min_blocks_per_stage": "2"}, "min_blocks_per_stage"),
        ({"max_doublings": -1}, "max_doublings"),
        ({"max_doublings": "3"}, "max_doublings"),
        ({"block_types": ["BNB", "RB"]}, "block_types"),
        ({"block_types": []}, "block_types"),
    ],
)
def test_invalid_bounds_raise_config_error(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict(values)
    assert key in str(info.value)
    with pytest.raises(ConfigError):
        SearchSpace(**values)


def test_unknown_block_type_is_named() -> None:
    with pytest.raises(ConfigError, match="'RB'"):
        SearchSpace(block_types=("BNB", "RB"))


def test_a_single_block_type_string_is_one_type() -> None:
    space = SearchSpace.from_dict({"block_types": "BNB"})
    assert space.block_types == ("BNB",)
    assert space.contains(RESNET50)
    assert not space.contains(RESNET18)


def test_config_error_is_a_value_error_but_not_an_arch_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert not issubclass(ConfigError, ArchError)
