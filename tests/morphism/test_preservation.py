"""Function preservation of weight inheritance (docs/design.md §2, §3; the issue's requirement).

A child built by expand, add_stage or by adding parallel subnets, with the weights
:func:`~spnas.morphism.inherit` gives it, must compute its parent's function on every output the
parent has (``res2`` …), in eval mode (running statistics) *and* in train mode (batch
statistics). Every test uses random weights in which nothing is trivially an identity: every
norm's scale, shift, running mean and variance is random (scales of both signs), the child is
randomised too before inheriting (so any tensor inheritance forgets shows), inputs are batches
of 2 non-square images.

Tolerance: :data:`TOL` = 1e-5 absolute. With the norm statistics chosen below, outputs are
O(1–10) (measured: max |f| per output ≈ 1.4–6 in eval mode, ≈ 3.7–8 in train mode), where a
float32 ulp is ≤ 1e-6: 1e-5 allows the rounding of a kernel that sums in another order, and is
orders of magnitude below any real change (the negative controls below see differences > 1e-2).
Measured differences are exactly 0: the inherited computation is the parent's, op for op, and
a new block's branch (or a new subnet's fusion) outputs exactly 0 — 0·x̂ + 0 — whatever
statistics its norm uses, so train mode is exact too.

Swaps move a stage boundary, which changes resolutions: there only reuse is asserted (every
parent tensor lands in the child with its shape, 100 % inherited).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from spnas.arch import ParallelCode, SearchSpace, SerialCode
from spnas.modeling import SerialNet, SPNet
from spnas.modeling.serialnet import ShapeSpec
from spnas.morphism import (
    AddStage,
    Expand,
    InheritReport,
    Op,
    Swap,
    apply_all,
    inherit,
    mutate,
    trace,
)
from spnas.testing import randomize

BLOCKS = ("BB", "BNB", "XB")
WIDTH = 16
XB_GROUPS = 8  # XB inner width 2·16 = 32 must divide by the groups
TOL = 1e-5  # see the module docstring
# A difference a real change makes is far above TOL; the negative controls assert this much.
CONTROL_DIFF = 1e-2
BATCH, HEIGHT, WIDTH_PX = 2, 64, 96
SPACE = SearchSpace(min_blocks=4, max_blocks=16, min_stages=4, max_stages=6)
MUTATION_SEEDS = range(8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parent_code(block: str) -> SerialCode:
    # Stage 0 has 2 blocks, stage 1 three, stages 2 and 3 one: expand can go after the first,
    # a middle or the last block of a stage, and after a stage's only block.
    return SerialCode.parse(f"{block}(11,d11,d1,d1)")


def build(code: SerialCode | str, parallel: ParallelCode | str | None = None) -> SerialNet:
    if parallel is None:
        return SerialNet(code, base_width=WIDTH, xb_groups=XB_GROUPS)
    return SPNet(code, parallel, base_width=WIDTH, xb_groups=XB_GROUPS)


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, 3, HEIGHT, WIDTH_PX, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def outputs(net: nn.Module, x: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """``net(x)`` in ``mode``, on a copy: train-mode statistics updates do not leak."""
    return copy.deepcopy(net).train(mode == "train")(x)


def output_diffs(
    parent: nn.Module, child: nn.Module, x: torch.Tensor
) -> dict[str, dict[str, float]]:
    """``{mode: {output: max |child − parent|}}`` over the parent's outputs, eval and train.

    Also asserts the comparison is not vacuous: every parent output is far from zero.
    """
    diffs: dict[str, dict[str, float]] = {}
    for mode in ("eval", "train"):
        expected, got = outputs(parent, x, mode), outputs(child, x, mode)
        diffs[mode] = {}
        for name, value in expected.items():
            assert name in got, f"{mode}: child lost output {name}"
            assert got[name].shape == value.shape, (mode, name, got[name].shape, value.shape)
            assert float(value.abs().max()) > 0.1, (mode, name)
            diffs[mode][name] = float((got[name] - value).abs().max())
    return diffs


def assert_preserved(parent: nn.Module, child: nn.Module, x: torch.Tensor) -> None:
    diffs = output_diffs(parent, child, x)
    worst = max(max(d.values()) for d in diffs.values())
    assert worst <= TOL, f"outputs changed: {diffs}"


def assert_changed(parent: nn.Module, child: nn.Module, x: torch.Tensor) -> None:
    diffs = output_diffs(parent, child, x)
    assert max(max(d.values()) for d in diffs.values()) > CONTROL_DIFF, diffs


def serial_parent(block: str, seed: int = 1) -> SerialNet:
    return randomize(build(parent_code(block)), seed)


def inherited_child(
    parent: SerialNet,
    ops: list[Op] | tuple[Op, ...],
    parallel: str | None = None,
    parent_parallel: str | None = None,
) -> tuple[SerialNet, InheritReport]:
    child = randomize(build(apply_all(parent.code, ops), parallel), seed=99)
    report = inherit(parent.state_dict(), parent.code, child, ops, parent_parallel=parent_parallel)
    return child, report


def block_keys(model: nn.Module, stage: int, index: int, owner: str | None = None) -> set[str]:
    name = f"{owner or f'res{stage + 2}'}.{index}"
    return {f"{name}.{k}" for k in model.get_submodule(name).state_dict()}


# ---------------------------------------------------------------------------- expand
EXPAND_POSITIONS = [
    pytest.param(0, 0, id="s0-after-first"),  # first stage, stride-4 level
    pytest.param(0, 1, id="s0-after-last"),  # after the last block of the first stage
    pytest.param(1, 1, id="s1-middle"),
    pytest.param(1, 2, id="s1-after-last"),
    pytest.param(2, 0, id="s2-after-only"),
    pytest.param(3, 0, id="s3-after-last-of-net"),
]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize(("stage", "after"), EXPAND_POSITIONS)
def test_expand_preserves_function(block: str, stage: int, after: int) -> None:
    parent = serial_parent(block)
    ops = [Expand(stage, after)]
    child, report = inherited_child(parent, ops)
    assert set(report.new) == block_keys(child, stage, after + 1)
    assert_preserved(parent, child, images())


@pytest.mark.parametrize("block", BLOCKS)
def test_expand_control_nonzero_new_branch_changes_function(block: str) -> None:
    # The check above can fail: the same child with its new block's last norm shifted by 0.1
    # (what a forgotten zero-initialisation amounts to) is far off in both modes.
    parent = serial_parent(block)
    child, _ = inherited_child(parent, [Expand(1, 0)])
    with torch.no_grad():
        child.get_submodule("res3.1").last_norm.bias.fill_(0.1)
    for mode, diffs in output_diffs(parent, child, images()).items():
        assert diffs["res2"] <= TOL  # upstream of the new block
        assert diffs["res3"] > CONTROL_DIFF, mode


# ---------------------------------------------------------------------------- add_stage
@pytest.mark.parametrize("block", BLOCKS)
def test_add_stage_preserves_function_and_adds_a_level(block: str) -> None:
    parent = serial_parent(block)
    child, report = inherited_child(parent, [AddStage()])
    x = images()
    assert_preserved(parent, child, x)

    last = parent.output_shape()["res5"]
    assert child.output_shape()["res6"] == ShapeSpec(last.channels, 2 * last.stride)
    assert set(report.new) == block_keys(child, 4, 0)
    with torch.no_grad():
        out = child.eval()(x)
    assert set(out) == {"res2", "res3", "res4", "res5", "res6"}
    h5, w5 = out["res5"].shape[-2:]
    assert tuple(out["res6"].shape) == (BATCH, last.channels, math.ceil(h5 / 2), math.ceil(w5 / 2))
    assert last.stride == 32 and (h5, w5) == (HEIGHT // 32, WIDTH_PX // 32)


# ---------------------------------------------------------------------------- parallel
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("parallel", ["(1,0,2,1)", "(3,3,3,3)", "(0,0,0,1)"])
def test_serial_to_parallel_preserves_function(block: str, parallel: str) -> None:
    parent = serial_parent(block)
    child, report = inherited_child(parent, [], parallel=parallel)
    assert isinstance(child, SPNet) and str(child.parallel) == parallel
    assert not report.mismatched and not report.dropped
    # Only the fusions are new (subnets copy their stage).
    assert report.new and all("_u" in k for k in report.new)
    for name in child.stage_names:
        for _, fusion in child.subnets(name):
            assert not fusion.norm.weight.any() and not fusion.norm.bias.any()
    assert_preserved(parent, child, images())


PARALLEL_GROWTH = [
    pytest.param("(1,0,1,0)", "(2,1,3,0)", id="1010-to-2130"),
    pytest.param("(0,2,0,1)", "(3,3,1,2)", id="0201-to-3312"),
]


def parallel_parent(block: str, parallel: str) -> SPNet:
    """An SPNet whose subnets differ from their stages and whose fusions are non-zero."""
    parent = randomize(build(parent_code(block), parallel), seed=1)
    assert isinstance(parent, SPNet)
    for name in parent.stage_names:
        for _, fusion in parent.subnets(name):
            assert fusion.norm.weight.abs().min() > 0.1
    return parent


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize(("parent_parallel", "parallel"), PARALLEL_GROWTH)
def test_parallel_to_bigger_parallel_preserves_function(
    block: str, parent_parallel: str, parallel: str
) -> None:
    parent = parallel_parent(block, parent_parallel)
    x = images()
    # The parent's fusions matter: zeroing them changes its function.
    no_fusion = copy.deepcopy(parent)
    no_fusion.copy_stages_to_subnets()
    assert_changed(parent, no_fusion, x)

    child, report = inherited_child(parent, [], parallel=parallel, parent_parallel=parent_parallel)
    assert not report.mismatched and not report.dropped
    assert_preserved(parent, child, x)


@pytest.mark.parametrize("block", BLOCKS)
def test_parallel_control_appending_new_subnets_last_changes_function(block: str) -> None:
    # Why new subnets go first: the same weights with the new subnets appended after the
    # parent's (parent p1/u1 kept at p1/u1, new p2 copying its stage, zero u2) compute another
    # function, so the preservation test above would catch that layout.
    parent = parallel_parent(block, "(1,0,1,0)")
    child = build(parent.code, "(2,0,2,0)")
    assert isinstance(child, SPNet)
    state = parent.state_dict()
    for key, value in parent.state_dict().items():
        for stage in ("res2", "res4"):
            if key.startswith(f"{stage}."):
                state[f"{stage}_p2." + key[len(stage) + 1 :]] = value
    state.update({k: v for k, v in child.state_dict().items() if "_u2." in k})
    child.load_state_dict(state, strict=True)
    for stage in ("res2", "res4"):
        fusion = child.get_submodule(f"{stage}_u2")
        assert not fusion.norm.weight.any() and not fusion.norm.bias.any()
    assert_changed(parent, child, images())


@pytest.mark.parametrize("block", BLOCKS)
def test_ops_and_parallel_together_preserve_function(block: str) -> None:
    # Serial ops and parallel subnets at once: the new blocks inside the subnets copied from
    # their stage must start as identities too.
    parent = parallel_parent(block, "(1,1,0,0)")
    ops = [Expand(0, 1), Expand(1, 0), AddStage()]
    child, report = inherited_child(
        parent, ops, parallel="(2,1,1,0,1)", parent_parallel="(1,1,0,0)"
    )
    for owner in ("res2", "res2_p1", "res2_p2"):
        assert block_keys(child, 0, 2, owner) <= set(report.new)
        norm = child.get_submodule(f"{owner}.2").last_norm
        assert not norm.weight.any() and not norm.bias.any()
    assert_preserved(parent, child, images())


# ---------------------------------------------------------------------------- mutations
def has_swap(ops: tuple[Op, ...]) -> bool:
    return any(isinstance(op, Swap) for op in ops)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("seed", MUTATION_SEEDS)
def test_swap_free_mutation_preserves_function(block: str, seed: int) -> None:
    parent = serial_parent(block, seed=seed + 1)
    child_code, ops = mutate(
        parent.code, SPACE, seed, n_ops=3, weights={"expand": 1.0, "add_stage": 0.3}
    )
    assert len(ops) == 3 and not has_swap(ops)
    child, report = inherited_child(parent, ops)
    assert child.code == child_code
    assert 0 < report.fraction < 1 and not report.mismatched and not report.dropped
    assert_preserved(parent, child, images(seed))


def assert_full_reuse(
    parent: SerialNet, child: SerialNet, ops: tuple[Op, ...], report: InheritReport
) -> None:
    """Every parent tensor lands in the child with its shape; only new blocks are new."""
    block_map = trace(parent.code, ops)
    expected_new: set[str] = set()
    for ref in block_map.new_blocks():
        expected_new |= block_keys(child, ref.stage, ref.index)
    assert set(report.new) == expected_new
    assert report.mismatched == ()
    assert report.dropped == ()
    assert len(report.matched) == len(parent.state_dict())
    if not expected_new:
        assert report.fraction == 1.0


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("seed", MUTATION_SEEDS)
def test_default_mutation_reuses_every_parent_tensor(block: str, seed: int) -> None:
    # Default weights: most 3-op proposals contain a swap.
    parent = serial_parent(block, seed=seed + 1)
    _, ops = mutate(parent.code, SPACE, seed, n_ops=3)
    child, report = inherited_child(parent, ops)
    assert_full_reuse(parent, child, ops, report)
    if not has_swap(ops):
        assert_preserved(parent, child, images(seed))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("seed", range(4))
def test_swap_only_mutation_inherits_everything(block: str, seed: int) -> None:
    parent = serial_parent(block, seed=seed + 1)
    _, ops = mutate(parent.code, SPACE, seed, n_ops=3, weights={"swap": 1.0})
    assert all(isinstance(op, Swap) for op in ops)
    child, report = inherited_child(parent, ops)
    assert report.fraction == 1.0
    assert report.new == () and report.mismatched == () and report.dropped == ()
    assert_full_reuse(parent, child, ops, report)
    # Stages before the first moved boundary see nothing change.
    first = min(op.boundary for op in ops if isinstance(op, Swap))
    x = images(seed)
    for mode in ("eval", "train"):
        expected, got = outputs(parent, x, mode), outputs(child, x, mode)
        for name in parent.stage_names[:first]:
            assert float((got[name] - expected[name]).abs().max()) <= TOL, (mode, name)
