"""Random proposals (``mutate``) and the ``spnas mutate`` command."""

from __future__ import annotations

import json
import random

import pytest

from spnas import cli
from spnas.arch import RESNET18, RESNET50, SearchSpace, SerialCode
from spnas.exceptions import ArchError, ConfigError
from spnas.morphism import (
    DEFAULT_WEIGHTS,
    AddStage,
    Expand,
    NoCandidateError,
    Swap,
    apply_all,
    mutate,
    parse_op,
    trace,
)

SPACE = SearchSpace()


def test_mutate_properties_over_many_seeds() -> None:
    avoid = {
        SerialCode.parse("BB(111,d1,d1,d1)"),
        SerialCode.parse("BB(1,1d1,d1,d1)"),
        "BB(11,d11,d1,d1)",
    }
    avoided = {SerialCode.parse(c) for c in avoid}
    for parent in (RESNET18, RESNET50):
        for seed in range(150):
            child, ops = mutate(parent, SPACE, seed, avoid=avoid)
            assert SPACE.contains(child)
            assert child != parent
            assert child not in avoided
            assert len(ops) == 3
            assert apply_all(parent, ops) == child
            assert tuple(parse_op(str(op)) for op in ops) == ops
            block_map = trace(parent, ops)
            assert block_map.child == child
            inherited = sorted(src for _, src in block_map.items() if src is not None)
            assert inherited == [(b.stage, b.index) for b in parent.blocks()]
            assert len(block_map.new_blocks()) == child.num_blocks - parent.num_blocks


def test_mutate_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    runs = [mutate(RESNET18, SPACE, seed) for seed in range(20)]
    assert runs == [mutate(RESNET18, SPACE, seed) for seed in range(20)]
    assert runs[3] == mutate(RESNET18, SPACE, random.Random(3))
    assert len({child for child, _ in runs}) >= 15


def test_mutate_advances_a_shared_rng() -> None:
    rng = random.Random(7)
    first = mutate(RESNET18, SPACE, rng)
    second = mutate(RESNET18, SPACE, rng)
    assert first != second


def test_avoid_changes_the_child() -> None:
    child, _ = mutate(RESNET18, SPACE, 0)
    other, _ = mutate(RESNET18, SPACE, 0, avoid=[str(child)])
    assert other != child
    # A lone code (a string) is one code to avoid, not a collection of characters.
    assert mutate(RESNET18, SPACE, 0, avoid=str(child))[0] != child


def test_no_candidate_when_everything_is_avoided() -> None:
    small = SearchSpace(min_blocks=1, max_blocks=3, min_stages=1, max_stages=2)
    parent = SerialCode.parse("BB(1,1)")
    # One op from BB(1,1): only the two expands fit (no swap can leave a stage, add_stage
    # exceeds max_stages).
    children = {mutate(parent, small, seed, n_ops=1)[0] for seed in range(30)}
    assert children == {SerialCode.parse("BB(11,1)"), SerialCode.parse("BB(1,11)")}
    with pytest.raises(NoCandidateError, match="neighbourhood is exhausted") as info:
        mutate(parent, small, 0, n_ops=1, avoid=children, max_tries=200)
    assert isinstance(info.value, ArchError)
    assert "already evaluated or running" in str(info.value)
    assert "BB(1,1)" in str(info.value)


def test_no_candidate_when_every_child_is_outside_the_space() -> None:
    # Any one swap leaves a stage of ResNet-18 with a single block.
    with pytest.raises(NoCandidateError, match="1000 outside the search space"):
        mutate(RESNET18, SearchSpace(min_blocks_per_stage=2), 0, n_ops=1, weights={"swap": 1})
    # Expand is never drawn at max_blocks: no op of a weighted kind fits.
    with pytest.raises(NoCandidateError, match="found no valid op of a weighted kind"):
        mutate(RESNET18, SearchSpace(max_blocks=8), 0, n_ops=1, weights={"expand": 1})
    with pytest.raises(NoCandidateError, match="9 blocks > max_blocks=8"):
        mutate("BB(111,d1,d1,d1)", SearchSpace(max_blocks=8), 0)


def test_swaps_only_keep_the_block_count() -> None:
    for seed in range(30):
        child, ops = mutate(RESNET18, SPACE, seed, weights={"swap": 1.0})
        assert all(isinstance(op, Swap) for op in ops)
        assert child.num_blocks == RESNET18.num_blocks


def test_add_stage_only_below_max_stages() -> None:
    child, ops = mutate(RESNET18, SPACE, 0, n_ops=3, weights={"add_stage": 1.0})
    assert ops == (AddStage(),) * 3
    assert child.num_stages == 7
    with pytest.raises(NoCandidateError):
        mutate(RESNET18, SearchSpace(max_stages=6), 0, weights={"add_stage": 1.0}, max_tries=5)
    # Mixed weights: add_stage is left out at the bound, the other kinds still drawn.
    weights = {"expand": 1.0, "swap": 1.0, "add_stage": 100.0}
    for seed in range(20):
        _, ops = mutate(RESNET18, SearchSpace(max_stages=4), seed, weights=weights)
        assert not any(isinstance(op, AddStage) for op in ops)


def test_default_weights_draw_every_kind() -> None:
    assert set(DEFAULT_WEIGHTS) == {"expand", "swap", "add_stage"}
    kinds = {type(op) for seed in range(200) for op in mutate(RESNET18, SPACE, seed)[1]}
    assert kinds == {Expand, Swap, AddStage}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"weights": {"grow": 1.0}}, "unknown op kind 'grow'"),
        ({"weights": {"swap": -1.0}}, "mutation weight swap=-1.0"),
        ({"weights": {"swap": 0.0}}, "at least one positive weight"),
        ({"n_ops": 0}, "n_ops=0"),
        ({"max_tries": 0}, "max_tries=0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match="expected") as info:
        mutate(RESNET18, SPACE, 0, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_bad_codes() -> None:
    with pytest.raises(ArchError, match="column"):
        mutate("BB(11,x1)", SPACE, 0)
    with pytest.raises(ArchError, match="column"):
        mutate(RESNET18, SPACE, 0, avoid=["BB(1;;1)"])
    with pytest.raises(ConfigError, match="rng="):
        mutate(RESNET18, SPACE, "seed")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- command line
def _child_in_space(text: str) -> SerialCode:
    """Parse a printed child and check it lies in the default space."""
    code = SerialCode.parse(text)
    assert SPACE.contains(code), text
    return code


@pytest.fixture
def only_mutate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Build the parser from this command alone, so these tests do not depend on the other
    # sub-commands' modules.
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("mutate",))


@pytest.mark.usefixtures("only_mutate")
def test_cli_prints_child_and_ops(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mutate", "BB(11,d1,d1,d1)", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    parent_text, child_text = lines[0].split(" -> ")
    assert parent_text == "BB(11,d1,d1,d1)"
    child = _child_in_space(child_text)
    ops = [parse_op(line) for line in lines[1:]]
    assert len(ops) == 3
    assert apply_all(RESNET18, ops) == child
    assert (child, tuple(ops)) == mutate(RESNET18, SPACE, 0)


@pytest.mark.usefixtures("only_mutate")
def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mutate", "BB(11,d1,d1,d1)", "--seed", "5", "--ops", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["parent"] == "BB(11,d1,d1,d1)"
    assert len(record["ops"]) == 2
    assert apply_all(record["parent"], record["ops"]) == _child_in_space(record["child"])
    assert record["seed"] == 5


@pytest.mark.usefixtures("only_mutate")
def test_cli_seeds_give_different_children(capsys: pytest.CaptureFixture[str]) -> None:
    children = set()
    for seed in range(8):
        assert cli.main(["mutate", "BB(11,d1,d1,d1)", "--seed", str(seed), "--json"]) == 0
        children.add(json.loads(capsys.readouterr().out)["child"])
    assert len(children) >= 5


@pytest.mark.usefixtures("only_mutate")
def test_cli_space_bounds_and_avoid(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["mutate", "BB(11,d1,d1,d1)", "--seed", "1", "--max-stages", "4", "--json"]
    assert cli.main([*args, "--max-blocks", "9"]) == 0
    child = SerialCode.parse(json.loads(capsys.readouterr().out)["child"])
    assert child.num_stages == 4 and child.num_blocks <= 9
    assert cli.main([*args, "--max-blocks", "9", "--avoid", str(child)]) == 0
    assert json.loads(capsys.readouterr().out)["child"] != str(child)


@pytest.mark.usefixtures("only_mutate")
def test_cli_bad_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mutate", "BB(11,x1)", "--seed", "0"]) == 2
    captured = capsys.readouterr()
    assert "column" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.usefixtures("only_mutate")
def test_cli_exhausted(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mutate", "BB(111,d1,d1,d1)", "--max-blocks", "8"]) == 2
    assert "max_blocks=8" in capsys.readouterr().err
