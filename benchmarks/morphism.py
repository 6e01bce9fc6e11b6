"""Function preservation and weight reuse of the network morphisms, measured.

For each block type (BB, BNB, XB) and each way a child grows from its parent (expand,
add_stage, serial → parallel, parallel → more parallel) plus swap, this builds the parent with
random weights, applies random ops at several random positions, loads the parent into the child
with :func:`spnas.morphism.inherit` (the search's own code path, nothing re-implemented here) and
records:

- ``max_abs_diff_eval`` / ``max_abs_diff_train``: max |child − parent| over every backbone
  output the parent has, with running statistics (eval) and with batch statistics (train);
- ``inherited_fraction``: the smallest ``InheritReport.fraction`` over the cases (the share of
  the child's parameters copied from the parent).

Targets: |Δ| ≤ 1e-5 for the function-preserving ops (float32 rounding of a kernel that sums in
another order, far below any real change) and 100 % inherited for swap. Swap moves a stage
boundary, so it changes the function by design: its |Δ| is reported (over the outputs whose
shape is unchanged) but not targeted; ``max_abs_diff_unmoved`` covers the stages before the
first moved boundary, which must not change.

Why random everything: with default initialisation a norm is an identity (scale 1, shift 0,
mean 0, variance 1) and a forgotten tensor could go unnoticed. Every norm's scale (both signs),
shift, running mean and variance is random, the child is randomised *before* inheriting (so any
tensor inheritance misses shows up as a difference), and inputs are a batch of 2 non-square
images.

Run: ``.venv/bin/python benchmarks/morphism.py [--json] [--cases 5]``.
"""

from __future__ import annotations

import copy
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, report, spread, write_result

from spnas.arch import ParallelCode, SerialCode
from spnas.modeling import SerialNet, SPNet
from spnas.morphism import (
    AddStage,
    Expand,
    Op,
    Swap,
    apply_all,
    inherit,
    trace,
    valid_ops,
)
from spnas.testing import randomize

NAME = "morphism"
#: Parent networks: ResNet-18- and ResNet-50-shaped codes, and a small ResNeXt.
PARENTS = {
    "BB": "BB(11,d1,d1,d1)",
    "BNB": "BNB(111,d111,d11111,d11)",
    "XB": "XB(11,d1,d1,d1)",
}
BASE_WIDTH = 16
XB_GROUPS = 8  # XB's inner width 2·16 = 32 must divide by the groups
BATCH, HEIGHT, WIDTH = 2, 64, 96  # non-square, so a transposed H/W would show
MAX_SUBNETS = 3  # the search space's default K
TOL = 1e-5
TARGETS = {
    "max_abs_diff": TOL,
    "max_abs_diff_ops": ["expand", "add_stage", "parallel", "parallel_grow"],
    "inherited_fraction_swap": 1.0,
}


def build(code: SerialCode, parallel: ParallelCode | None = None) -> SerialNet:
    """The bare backbone; an SPNet only when it has parallel subnets."""
    if parallel is None:
        return SerialNet(code, base_width=BASE_WIDTH, xb_groups=XB_GROUPS)
    return SPNet(code, parallel, base_width=BASE_WIDTH, xb_groups=XB_GROUPS)


@torch.no_grad()
def outputs(net: nn.Module, x: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """``net(x)`` in ``mode`` on a copy, so train-mode statistic updates do not leak."""
    return copy.deepcopy(net).train(mode == "train")(x)


def compare(
    parent: SerialNet, child: SerialNet, x: torch.Tensor, unmoved: tuple[str, ...] = ()
) -> dict[str, float]:
    """Max |child − parent| over the parent's outputs of equal shape, per mode.

    Also the max over ``unmoved`` outputs only, and the largest |parent output| (the scale the
    differences are to be read against).
    """
    result: dict[str, float] = {"unmoved": 0.0, "scale": 0.0, "compared": 0}
    for mode in ("eval", "train"):
        expected, got = outputs(parent, x, mode), outputs(child, x, mode)
        worst = 0.0
        for name, value in expected.items():
            result["scale"] = max(result["scale"], float(value.abs().max()))
            if name not in got or got[name].shape != value.shape:
                continue
            diff = float((got[name] - value).abs().max())
            worst = max(worst, diff)
            if name in unmoved:
                result["unmoved"] = max(result["unmoved"], diff)
            result["compared"] += 1
        result[mode] = worst
    result["compared"] //= 2
    return result


def random_parallel(rng: random.Random, stages: int, floor: ParallelCode | None) -> ParallelCode:
    """A parallel code with at least ``floor``'s subnets per stage and at least one more."""
    base = floor.subnets if floor is not None else (0,) * stages
    while True:
        code = tuple(rng.randint(k, MAX_SUBNETS) for k in base)
        if code != base:
            return ParallelCode(code)


Case = tuple[tuple[Op, ...], ParallelCode | None, ParallelCode | None]


def draw_case(op: str, code: SerialCode, rng: random.Random) -> Case:
    """``(ops, parent_parallel, child_parallel)`` of one random case of ``op``."""
    if op == "expand":
        return (rng.choice([o for o in valid_ops(code) if isinstance(o, Expand)]),), None, None
    if op == "swap":
        return (rng.choice([o for o in valid_ops(code) if isinstance(o, Swap)]),), None, None
    if op == "add_stage":
        return (AddStage(),), None, None
    if op == "parallel":
        return (), None, random_parallel(rng, code.num_stages, None)
    if op == "parallel_grow":
        parent = random_parallel(rng, code.num_stages, None)
        while sum(parent.subnets) == MAX_SUBNETS * code.num_stages:
            parent = random_parallel(rng, code.num_stages, None)
        return (), parent, random_parallel(rng, code.num_stages, parent)
    raise ValueError(f"unknown op {op!r}")


OPS = ("expand", "add_stage", "parallel", "parallel_grow", "swap")


def run_case(code: SerialCode, case: Case, seed: int, x: torch.Tensor) -> dict[str, Any]:
    """Build, randomise, inherit and compare one parent/child pair."""
    ops, parent_parallel, child_parallel = case
    parent = randomize(build(code, parent_parallel), seed)
    child = randomize(build(apply_all(code, ops), child_parallel), seed + 1000)
    inherited = inherit(parent.state_dict(), code, child, ops, parent_parallel=parent_parallel)
    swaps = [op.boundary for op in ops if isinstance(op, Swap)]
    unmoved = parent.stage_names[: min(swaps)] if swaps else parent.stage_names
    diffs = compare(parent, child, x, unmoved)
    moved_blocks = len(trace(code, ops).moved_blocks()) if swaps else 0
    return {
        "ops": [str(op) for op in ops],
        "parent_parallel": None if parent_parallel is None else str(parent_parallel),
        "child_parallel": None if child_parallel is None else str(child_parallel),
        "eval": diffs["eval"],
        "train": diffs["train"],
        "unmoved": diffs["unmoved"],
        "scale": diffs["scale"],
        "compared_outputs": diffs["compared"],
        "fraction": inherited.fraction,
        "matched": len(inherited.matched),
        "new": len(inherited.new),
        "mismatched": len(inherited.mismatched),
        "dropped": len(inherited.dropped),
        "moved_blocks": moved_blocks,
    }


def summarize(op: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst case over the cases of one (block, op)."""
    fractions = [c["fraction"] for c in cases]
    entry: dict[str, Any] = {
        "max_abs_diff_eval": max(c["eval"] for c in cases),
        "max_abs_diff_train": max(c["train"] for c in cases),
        "inherited_fraction": min(fractions),
        "inherited_fraction_spread": spread(fractions),
        "max_abs_output": max(c["scale"] for c in cases),
        "cases": [{k: v for k, v in c.items() if k != "scale"} for c in cases],
    }
    if op == "swap":
        entry["max_abs_diff_unmoved"] = max(c["unmoved"] for c in cases)
        entry["meets_targets"] = (
            entry["inherited_fraction"] == TARGETS["inherited_fraction_swap"]
            and entry["max_abs_diff_unmoved"] <= TOL
            and all(c["new"] == c["mismatched"] == c["dropped"] == 0 for c in cases)
        )
    else:
        entry["meets_targets"] = max(entry["max_abs_diff_eval"], entry["max_abs_diff_train"]) <= TOL
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5, help="random cases per block and op")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Tiny networks: one thread is as fast, and two threads on a busy 2-core machine are
    # much slower.
    torch.set_num_threads(1)
    x = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    blocks: dict[str, dict[str, Any]] = {}
    for block, text in PARENTS.items():
        code = SerialCode.parse(text)
        blocks[block] = {}
        for op_index, op in enumerate(OPS):
            rng = random.Random(f"{args.seed}-{block}-{op}")
            cases = [
                run_case(code, draw_case(op, code, rng), seed, x)
                for seed in range(
                    args.seed * 1000 + op_index * 100,
                    args.seed * 1000 + op_index * 100 + args.cases,
                )
            ]
            blocks[block][op] = summarize(op, cases)
    result = {
        "parents": PARENTS,
        "base_width": BASE_WIDTH,
        "xb_groups": XB_GROUPS,
        "input": [BATCH, 3, HEIGHT, WIDTH],
        "cases_per_op": args.cases,
        "seed": args.seed,
        "targets": TARGETS,
        "blocks": blocks,
        "meets_targets": all(e["meets_targets"] for ops in blocks.values() for e in ops.values()),
        "seconds": time.perf_counter() - start,
    }
    if args.json:
        report(NAME, result, args)
        return 0
    # One line per (block, op) rather than report()'s one line per key: "blocks" is long.
    path = write_result(NAME, result, args.out)
    for block, ops in blocks.items():
        for op, e in ops.items():
            extra = f" unmoved={e['max_abs_diff_unmoved']:.2e}" if op == "swap" else ""
            print(
                f"{block:4s} {op:14s} eval={e['max_abs_diff_eval']:.2e} "
                f"train={e['max_abs_diff_train']:.2e}{extra} "
                f"inherited={e['inherited_fraction']:.4f} ok={e['meets_targets']}"
            )
    print(f"meets_targets: {result['meets_targets']}  ({result['seconds']:.1f} s)")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
