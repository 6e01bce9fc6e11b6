"""Behaviour of ``ParallelCode``: ``(0,2,1,3)``, extra subnets per stage (docs/design.md §1, §3)."""

from __future__ import annotations

import dataclasses

import pytest

from spnas.arch import ParallelCode
from spnas.exceptions import ArchError


def _error(text: object) -> str:
    with pytest.raises(ArchError) as info:
        ParallelCode.parse(text)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "subnets"),
    [
        ("(0,2,1,3)", (0, 2, 1, 3)),
        ("0,2,1,3", (0, 2, 1, 3)),
        ("(0)", (0,)),
        ("5", (5,)),
        (" ( 0 , 2 ,1, 3 ) ", (0, 2, 1, 3)),
        ("(0;2;1;3)", (0, 2, 1, 3)),
        ("0-2-1-3", (0, 2, 1, 3)),
        ("(0,0,0,0,0,0,0)", (0,) * 7),
        ("(10,0)", (10, 0)),
        ("(007,1)", (7, 1)),
    ],
)
def test_parse(text: str, subnets: tuple[int, ...]) -> None:
    code = ParallelCode.parse(text)
    assert code.subnets == subnets
    assert code.num_stages == len(subnets) == len(code)
    assert list(code.subnets) == [code[i] for i in range(len(code))]


@pytest.mark.parametrize("text", ["(0,2,1,3)", "(0)", "(3,3,3,3,3)", "(0,0,0,0)", "(12,0,1)"])
def test_str_round_trip(text: str) -> None:
    code = ParallelCode.parse(text)
    assert str(code) == text
    assert ParallelCode.parse(str(code)) == code
    assert repr(code) == f"ParallelCode({text!r})"


def test_without_parentheses_emits_them() -> None:
    assert str(ParallelCode.parse("0,2,1,3")) == "(0,2,1,3)"
    assert ParallelCode.parse("0,2,1,3") == ParallelCode.parse("(0,2,1,3)")


def test_parse_returns_a_parallel_code_unchanged() -> None:
    code = ParallelCode((0, 1))
    assert ParallelCode.parse(code) is code


def test_value_semantics() -> None:
    a = ParallelCode.parse("(0,2,1,3)")
    b = ParallelCode((0, 2, 1, 3))
    c = ParallelCode([0, 2, 1, 3])  # type: ignore[arg-type]
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert isinstance(c.subnets, tuple)
    assert a != ParallelCode((0, 2, 1))
    assert len({a, b, c, ParallelCode.zeros(4)}) == 2
    assert {a: 1}[c] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.subnets = (0,)  # type: ignore[misc]


@pytest.mark.parametrize("num_stages", [1, 4, 7])
def test_zeros(num_stages: int) -> None:
    code = ParallelCode.zeros(num_stages)
    assert code.subnets == (0,) * num_stages
    assert code.total == 0
    assert str(code) == "(" + ",".join(["0"] * num_stages) + ")"


def test_zeros_needs_a_stage() -> None:
    with pytest.raises(ArchError, match="no stages"):
        ParallelCode.zeros(0)


def test_add_returns_a_new_code() -> None:
    code = ParallelCode.zeros(4)
    one = code.add(2)
    assert one == ParallelCode((0, 0, 1, 0))
    assert code == ParallelCode.zeros(4)  # unchanged
    two = one.add(2).add(0)
    assert two.subnets == (1, 0, 2, 0)
    assert two.total == 3


def test_add_out_of_range() -> None:
    with pytest.raises(IndexError):
        ParallelCode.zeros(4).add(4)


@pytest.mark.parametrize(
    ("subnets", "total"), [((0,), 0), ((0, 2, 1, 3), 6), ((3, 3, 3, 3, 3, 3, 3), 21)]
)
def test_total(subnets: tuple[int, ...], total: int) -> None:
    assert ParallelCode(subnets).total == total


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("(0,x,1)", 4, "unexpected 'x', expected a non-negative integer"),
        ("(0,2", 5, "unexpected end of code, expected ',' or ')'"),
        ("(0,-1,2)", 4, "unexpected '-', expected a non-negative integer"),
        ("-1,2", 1, "unexpected '-', expected a non-negative integer"),
        ("(0,,1)", 4, "unexpected ',', expected a non-negative integer"),
        ("(0,2,)", 6, "unexpected ')', expected a non-negative integer"),
        ("()", 2, "unexpected ')', expected a non-negative integer"),
        ("", 1, "unexpected end of code, expected a non-negative integer"),
        ("  ", 3, "unexpected end of code, expected a non-negative integer"),
        ("(0,2)x", 6, "unexpected 'x', expected end of code after ')'"),
        ("0,2)", 4, "unexpected ')', expected ',' or end of code"),
        ("(0,2 3)", 6, "unexpected '3', expected ',' or ')'"),
        ("(0,1.5)", 5, "unexpected '.'"),
        ("(0,+1)", 4, "unexpected '+'"),
        ("(0,²)", 4, "unexpected '²', expected a non-negative integer"),
        ("  (0, y)", 7, "unexpected 'y'"),
    ],
)
def test_parse_errors_name_input_and_column(text: str, column: int, message: str) -> None:
    msg = _error(text)
    assert f"{text!r}" in msg
    assert f"column {column}: " in msg
    assert message in msg


def test_example_error_message_in_full() -> None:
    assert _error("(0,x,1)") == (
        "invalid parallel code '(0,x,1)': column 4: unexpected 'x', expected a non-negative integer"
    )


@pytest.mark.parametrize("value", [None, 3, (0, 1), [0, 1]])
def test_non_string_input(value: object) -> None:
    msg = _error(value)
    assert "must be a string" in msg
    assert type(value).__name__ in msg


@pytest.mark.parametrize(
    ("subnets", "message"),
    [
        ((), "no stages"),
        ((0, -1), "stage 1 has -1"),
        ((0, 1.0), "stage 1 has 1.0"),
        ((True, 0), "stage 0 has True"),
        (("1",), "stage 0 has '1'"),
    ],
)
def test_constructor_validates(subnets: tuple[object, ...], message: str) -> None:
    with pytest.raises(ArchError, match=message):
        ParallelCode(subnets)  # type: ignore[arg-type]
