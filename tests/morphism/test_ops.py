"""Morphism ops on codes: expand, swap, add_stage, their text form and block tracing."""

from __future__ import annotations

import itertools
import random

import pytest

from spnas.arch import RESNET18, RESNET50, SearchSpace, SerialCode
from spnas.exceptions import ArchError
from spnas.morphism import (
    AddStage,
    BlockMap,
    BlockRef,
    Expand,
    Op,
    Swap,
    apply,
    apply_all,
    format_ops,
    parse_op,
    parse_ops,
    trace,
    valid_ops,
)

R18 = "BB(11,d1,d1,d1)"


# ---------------------------------------------------------------------------- oracle
def oracle(parent: SerialCode, ops: list[Op]) -> tuple[list[list[str]], list[list[str]]]:
    """Simulate ops on lists of unique labels, independently of the module's implementation.

    Returns the child's characters and labels per stage; a parent block is labelled
    ``"s{stage}.{index}"``, a new block ``"new{k}"``.
    """
    chars = [list(stage) for stage in parent.stages]
    labels = [[f"s{s}.{i}" for i in range(len(stage))] for s, stage in enumerate(parent.stages)]
    fresh = itertools.count()
    for op in ops:
        text = str(op)
        if text.startswith("expand"):
            stage = int(text[len("expand(s") : text.index(",")])
            after = int(text[text.index("=") + 1 : -1])
            chars[stage].insert(after + 1, "1")
            labels[stage].insert(after + 1, f"new{next(fresh)}")
        elif text.startswith("swap"):
            b = int(text[len("swap(b") : text.index(",")])
            if text.endswith("left)"):
                chars[b + 1].insert(0, chars[b].pop())
                labels[b + 1].insert(0, labels[b].pop())
            else:
                chars[b].append(chars[b + 1].pop(0))
                labels[b].append(labels[b + 1].pop(0))
        else:
            assert text == "add_stage"
            chars.append(["1"])
            labels.append([f"new{next(fresh)}"])
    return chars, labels


def check_against_oracle(parent: SerialCode, ops: list[Op]) -> BlockMap:
    chars, labels = oracle(parent, ops)
    block_map = trace(parent, ops)
    assert block_map.child == SerialCode(parent.block, tuple("".join(c) for c in chars))
    assert block_map.child == apply_all(parent, ops)
    for stage, stage_labels in enumerate(labels):
        for index, label in enumerate(stage_labels):
            src = block_map.parent_of(stage, index)
            if label.startswith("new"):
                assert src is None, (stage, index, label)
            else:
                assert src == BlockRef(*(int(x) for x in label[1:].split("."))), (stage, index)
    return block_map


# ---------------------------------------------------------------------------- single ops
@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (Expand(0, 0), "BB(111,d1,d1,d1)"),
        (Expand(0, 1), "BB(111,d1,d1,d1)"),
        (Expand(1, 0), "BB(11,d11,d1,d1)"),
        (Expand(2, 1), "BB(11,d1,d11,d1)"),
        (Expand(3, 1), "BB(11,d1,d1,d11)"),
        (Swap(0, "left"), "BB(1,1d1,d1,d1)"),
        (Swap(0, "right"), "BB(11d,1,d1,d1)"),
        (Swap(1, "left"), "BB(11,d,1d1,d1)"),
        (Swap(2, "right"), "BB(11,d1,d1d,1)"),
        (AddStage(), "BB(11,d1,d1,d1,1)"),
    ],
)
def test_op_on_resnet18(op: Op, expected: str) -> None:
    assert apply(RESNET18, op) == SerialCode.parse(expected)
    assert apply(R18, str(op)) == SerialCode.parse(expected)


def test_expand_inserts_after_the_given_block() -> None:
    # Inserting after a "d" block: the new "1" block sits behind it, the "d" stays first.
    assert apply("BNB(111,d111,d11111,d11)", Expand(1, 0)) == SerialCode.parse(
        "BNB(111,d1111,d11111,d11)"
    )
    assert apply("BB(1,d1d,1,1)", Expand(1, 1)) == SerialCode.parse("BB(1,d11d,1,1)")


def test_expand_block_is_identity_shaped() -> None:
    for stage in range(RESNET50.num_stages):
        for after in range(len(RESNET50.stages[stage])):
            block_map = trace(RESNET50, [Expand(stage, after)])
            (new,) = block_map.new_blocks()
            assert new == (stage, after + 1)
            specs = {(b.stage, b.index): b for b in block_map.child.blocks()}
            spec, before = specs[new], specs[stage, after]
            assert spec.stride == 1 and not spec.doubles and not spec.has_projection
            assert spec.in_mult == spec.out_mult == before.out_mult
            assert spec.width_mult == before.width_mult
            # Every other block keeps its channels: the new block changes no tensor shape.
            assert block_map.child.stage_out_mults() == RESNET50.stage_out_mults()


def test_paper_figure_2_second_stage_grows_from_2_to_4() -> None:
    child = apply_all(RESNET18, [Swap(0, "left"), Swap(1, "right")])
    assert child == SerialCode.parse("BB(1,1d1d,1,d1)")
    assert child.blocks_per_stage[1] == 4


def test_swap_keeps_every_tensor_shape() -> None:
    """docs/design.md §2: a swap reuses 100 % of the tensors (shortcut type depends on channels)."""
    for op in valid_ops(RESNET50):
        if not isinstance(op, Swap):
            continue
        block_map = trace(RESNET50, [op])
        parent_specs = {(b.stage, b.index): b for b in RESNET50.blocks()}
        assert block_map.new_blocks() == ()
        for spec in block_map.child.blocks():
            src = parent_specs[block_map.parent_of(spec.stage, spec.index)]
            assert (spec.in_mult, spec.out_mult, spec.width_mult, spec.doubles) == (
                src.in_mult,
                src.out_mult,
                src.width_mult,
                src.doubles,
            )
            assert spec.has_projection == src.has_projection


def test_add_stage_block() -> None:
    child = apply(RESNET50, AddStage())
    last = child.blocks()[-1]
    assert (last.stage, last.index, last.stride, last.has_projection) == (4, 0, 2, False)
    assert child.stage_out_mults()[:4] == RESNET50.stage_out_mults()


# ---------------------------------------------------------------------------- text form
ALL_OPS: list[Op] = [
    Expand(0, 0),
    Expand(2, 3),
    Expand(12, 40),
    Swap(0, "left"),
    Swap(1, "right"),
    Swap(10, "left"),
    AddStage(),
]


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_str_parse_round_trip(op: Op) -> None:
    assert parse_op(str(op)) == op
    assert Op.parse(str(op)) == op
    assert type(op).parse(str(op)) == op
    assert hash(parse_op(str(op))) == hash(op)


def test_str_forms() -> None:
    assert str(Expand(2, 3)) == "expand(s2,after=3)"
    assert str(Swap(1, "left")) == "swap(b1,left)"
    assert str(AddStage()) == "add_stage"


def test_parse_is_lenient_about_spaces_and_case() -> None:
    assert parse_op("  Expand( s2 , after = 3 ) ") == Expand(2, 3)
    assert parse_op("SWAP(B0, Right)") == Swap(0, "right")
    assert parse_op("add_stage()") == AddStage()


def test_ops_round_trip() -> None:
    ops = tuple(ALL_OPS)
    text = format_ops(ops)
    assert text.startswith("expand(s0,after=0); expand(s2,after=3); ")
    assert parse_ops(text) == ops
    assert parse_ops("expand(s2,after=3); swap(b0,right)") == (Expand(2, 3), Swap(0, "right"))
    assert parse_ops("add_stage;") == (AddStage(),)
    assert parse_ops("") == parse_ops("   ") == ()
    assert format_ops(()) == ""


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("expnd(s2,after=3)", 1, "unknown op 'expnd', expected expand, swap or add_stage"),
        ("", 1, "unexpected end of op, expected an op"),
        ("expand(2,after=3)", 8, "unexpected '2', expected 's'"),
        ("expand(s2,after=)", 17, "unexpected ')', expected a number"),
        ("expand(s2,after=3", 18, "unexpected end of op, expected ')'"),
        ("swap(b0,up)", 9, "unexpected 'up', expected 'left' or 'right'"),
        ("swap(b0,)", 9, "unexpected ')', expected 'left' or 'right'"),
        ("add_stage x", 11, "unexpected 'x', expected end of op"),
        ("12", 1, "unexpected '1', expected an op"),
    ],
)
def test_parse_op_errors(text: str, column: int, fragment: str) -> None:
    with pytest.raises(ArchError) as info:
        parse_op(text)
    message = str(info.value)
    assert f"invalid op {text!r}: column {column}: " in message
    assert fragment in message


def test_parse_ops_errors_point_into_the_whole_text() -> None:
    text = "expand(s2,after=3); swap(b0,up)"
    with pytest.raises(ArchError, match=r"invalid ops .*: column 29: unexpected 'up'"):
        parse_ops(text)
    with pytest.raises(ArchError, match=r"column 20: unexpected 's', expected ';' or end of ops"):
        parse_ops("expand(s2,after=3) swap(b0,left)")


def test_subclass_parse_checks_the_kind() -> None:
    with pytest.raises(ArchError, match="found swap, expected expand"):
        Expand.parse("swap(b0,left)")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Expand(-1, 0), "stage=-1"),
        (lambda: Expand(0, 1.5), "after=1.5"),
        (lambda: Swap(True, "left"), "boundary=True"),
        (lambda: Swap(0, "up"), "direction='up', expected 'left' or 'right'"),
    ],
)
def test_bad_op_fields(make: object, fragment: str) -> None:
    with pytest.raises(ArchError, match=r"expected") as info:
        make()  # type: ignore[operator]
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------- invalid ops
@pytest.mark.parametrize(
    ("code", "op", "message"),
    [
        (
            R18,
            "expand(s5,after=0)",
            "expand(s5,after=0) does not fit BB(11,d1,d1,d1): stage 5 does not exist (4 stages)",
        ),
        (
            R18,
            "expand(s1,after=2)",
            "expand(s1,after=2) does not fit BB(11,d1,d1,d1): stage 1 has 2 blocks, "
            "so after must be 0 to 1",
        ),
        (
            R18,
            "swap(b3,left)",
            "swap(b3,left) does not fit BB(11,d1,d1,d1): boundary 3 does not exist "
            "(4 stages, boundaries b0 to b2)",
        ),
        (
            "BB(11111111)",
            "swap(b0,right)",
            "swap(b0,right) does not fit BB(11111111): boundary 0 does not exist "
            "(1 stage, no boundaries)",
        ),
        (
            "BB(1,d1111,d1,d1)",
            "swap(b0,left)",
            "swap(b0,left) does not fit BB(1,d1111,d1,d1): moving the only block of stage 0 "
            "into stage 1 would empty stage 0",
        ),
        (
            "BB(1111,d1,d,d1)",
            "swap(b1,right)",
            "swap(b1,right) does not fit BB(1111,d1,d,d1): moving the only block of stage 2 "
            "into stage 1 would empty stage 2",
        ),
    ],
)
def test_invalid_ops_name_op_and_code(code: str, op: str, message: str) -> None:
    with pytest.raises(ArchError) as info:
        apply(code, op)
    assert str(info.value) == message
    assert not parse_op(op).fits(SerialCode.parse(code))


def test_apply_all_names_the_failing_step() -> None:
    ops = "swap(b0,left); swap(b0,left)"
    with pytest.raises(ArchError) as info:
        apply_all(R18, ops)
    assert str(info.value) == (
        "swap(b0,left) does not fit BB(1,1d1,d1,d1): moving the only block of stage 0 into "
        "stage 1 would empty stage 0 (op 2 of 2 in 'swap(b0,left); swap(b0,left)' applied to "
        "BB(11,d1,d1,d1))"
    )


def test_apply_all_accepts_ops_text_and_strings() -> None:
    ops = [Expand(0, 1), Swap(2, "right")]
    expected = apply(apply(R18, ops[0]), ops[1])
    assert apply_all(R18, ops) == expected
    assert apply_all(R18, format_ops(ops)) == expected
    assert apply_all(R18, [str(op) for op in ops]) == expected
    assert apply_all(R18, ()) == RESNET18


# ---------------------------------------------------------------------------- valid ops
def test_valid_ops_on_resnet18() -> None:
    ops = valid_ops(RESNET18)
    assert sum(isinstance(op, Expand) for op in ops) == 8
    assert sum(isinstance(op, Swap) for op in ops) == 6
    assert ops[-1] == AddStage()
    assert all(op.fits(RESNET18) for op in ops)


def test_valid_ops_leave_out_swaps_that_empty_a_stage_and_respect_upper_bounds() -> None:
    code = SerialCode.parse("BB(1,d1,d,d1)")
    swaps = {str(op) for op in valid_ops(code) if isinstance(op, Swap)}
    assert swaps == {"swap(b0,right)", "swap(b1,left)", "swap(b2,right)"}
    assert AddStage() not in valid_ops(RESNET18, SearchSpace(max_stages=4))
    at_max = valid_ops(RESNET18, SearchSpace(max_blocks=8))
    assert at_max and all(isinstance(op, Swap) for op in at_max)


def test_valid_ops_are_exactly_the_fitting_ops() -> None:
    code = SerialCode.parse("BNB(1,d111,d,d11,1)")
    candidates = [Expand(s, a) for s in range(6) for a in range(5)]
    candidates += [Swap(b, d) for b in range(6) for d in ("left", "right")] + [AddStage()]
    assert set(valid_ops(code)) == {op for op in candidates if op.fits(code)}


# ---------------------------------------------------------------------------- tracing
def test_trace_expand() -> None:
    block_map = check_against_oracle(RESNET18, [Expand(1, 0)])
    assert block_map.child == SerialCode.parse("BB(11,d11,d1,d1)")
    assert block_map.parent_of(1, 0) == (1, 0)
    assert block_map.parent_of(1, 1) is None
    assert block_map.parent_of(1, 2) == (1, 1)  # shifted by one, still the same block
    assert block_map.new_blocks() == ((1, 1),)
    assert block_map.moved_blocks() == ()
    assert block_map.new_stages() == ()
    assert block_map.positions() == (0, 1, 2, None, 3, 4, 5, 6, 7)


def test_trace_swap_left() -> None:
    block_map = check_against_oracle(RESNET18, [Swap(0, "left")])
    assert block_map.child == SerialCode.parse("BB(1,1d1,d1,d1)")
    assert block_map.parent_of(1, 0) == (0, 1)  # moved across the boundary, same block
    assert block_map.parent_of(1, 1) == (1, 0)
    assert block_map.child_of(0, 1) == (1, 0)
    assert block_map.new_blocks() == ()
    assert block_map.moved_blocks() == ((1, 0),)
    assert block_map.positions() == tuple(range(8))


def test_trace_swap_right() -> None:
    block_map = check_against_oracle(RESNET18, [Swap(2, "right")])
    assert block_map.child == SerialCode.parse("BB(11,d1,d1d,1)")
    assert block_map.parent_of(2, 2) == (3, 0)
    assert block_map.parent_of(3, 0) == (3, 1)
    assert block_map.new_blocks() == ()
    assert block_map.moved_blocks() == ((2, 2),)


def test_trace_add_stage() -> None:
    block_map = check_against_oracle(RESNET18, [AddStage()])
    assert block_map.new_stages() == (4,)
    assert block_map.new_blocks() == ((4, 0),)
    assert block_map.parent_stage_of(3) == 3
    assert block_map.parent_stage_of(4) is None


@pytest.mark.parametrize(
    "ops",
    [
        # Expand inside a stage, then swap that stage's new last block out of it.
        "expand(s1,after=1); swap(b1,left); expand(s0,after=0)",
        "expand(s1,after=1); swap(b1,left); swap(b1,left)",
        "add_stage; swap(b3,left); expand(s4,after=0)",
        "add_stage; expand(s4,after=0); swap(b3,right)",
        "swap(b0,left); swap(b0,right); expand(s0,after=1)",
        "expand(s3,after=0); swap(b2,right); swap(b2,right)",
    ],
)
def test_trace_compositions_of_three_ops(ops: str) -> None:
    block_map = check_against_oracle(RESNET18, list(parse_ops(ops)))
    assert block_map.ops == parse_ops(ops)
    assert block_map.parent == RESNET18


def test_expand_then_swap_moves_the_new_block() -> None:
    block_map = trace(RESNET18, "expand(s1,after=1); swap(b1,left); add_stage")
    assert block_map.child == SerialCode.parse("BB(11,d1,1d1,d1,1)")
    assert block_map.parent_of(2, 0) is None  # the expanded block now starts stage 2
    assert block_map.parent_of(2, 1) == (2, 0)
    assert block_map.new_blocks() == ((2, 0), (4, 0))
    assert block_map.new_stages() == (4,)


def test_trace_random_sequences_against_oracle() -> None:
    rng = random.Random(1234)
    parents = [RESNET18, RESNET50, SerialCode.parse("XB(1,d,d1,d11,1)")]
    for _ in range(300):
        parent = rng.choice(parents)
        code, ops = parent, []
        for _ in range(rng.randint(0, 6)):
            op = rng.choice(valid_ops(code))
            ops.append(op)
            code = apply(code, op)
        block_map = check_against_oracle(parent, ops)
        # Ops never delete blocks: every parent block appears exactly once in the child.
        inherited = [src for _, src in block_map.items() if src is not None]
        assert sorted(inherited) == [(b.stage, b.index) for b in parent.blocks()]
        for child_ref, src in block_map.items():
            if src is not None:
                assert block_map.child_of(*src) == child_ref


def test_block_map_lookups_check_ranges() -> None:
    block_map = trace(RESNET18, [Expand(0, 0)])
    with pytest.raises(ArchError, match=r"child BB\(111,d1,d1,d1\) has no block 3 in stage 0"):
        block_map.parent_of(0, 3)
    with pytest.raises(ArchError, match=r"parent BB\(11,d1,d1,d1\) has no stage 4"):
        block_map.child_of(4, 0)
    with pytest.raises(ArchError, match="has no stage 7"):
        block_map.parent_stage_of(7)
    with pytest.raises(ArchError, match="blocks per stage"):
        BlockMap(RESNET18, RESNET18, (), ((None,),))


def test_block_map_as_dict_and_identity() -> None:
    block_map = trace(RESNET18, ())
    assert block_map.child == RESNET18
    assert block_map.as_dict() == {
        (b.stage, b.index): (b.stage, b.index) for b in RESNET18.blocks()
    }
    assert block_map.inherited_blocks() == tuple(block_map.as_dict())
