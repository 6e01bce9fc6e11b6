"""``spnas mutate CODE [--seed N] [--ops 3] [--avoid CODE]... [--max-blocks N] [--json]``."""

from __future__ import annotations

import argparse
import random

from spnas.arch import SearchSpace
from spnas.cli._json import dumps

_DEFAULT_SPACE = SearchSpace()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mutate",
        help="apply random morphism ops (expand, swap, add_stage) to a serial code",
        description="Draw a search proposal: apply random valid ops to a serial code and "
        "print the child and its ops (one per line, in the form spnas stores them).",
    )
    parser.add_argument("code", metavar="CODE", help='serial code, e.g. "BB(11,d1,d1,d1)"')
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    parser.add_argument(
        "--ops",
        type=int,
        default=3,
        dest="n_ops",
        metavar="N",
        help="number of ops to apply (default 3)",
    )
    parser.add_argument(
        "--avoid",
        action="append",
        default=[],
        metavar="CODE",
        help="a code the child must differ from (repeatable)",
    )
    for name in ("min_blocks", "max_blocks", "min_stages", "max_stages"):
        default = getattr(_DEFAULT_SPACE, name)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=default,
            help=f"search space bound (default {default})",
        )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.arch import SerialCode
    from spnas.morphism import mutate

    parent = SerialCode.parse(args.code)
    space = SearchSpace(
        min_blocks=args.min_blocks,
        max_blocks=args.max_blocks,
        min_stages=args.min_stages,
        max_stages=args.max_stages,
    )
    # Draw a seed when none is given so the JSON output can say how to reproduce it.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    child, ops = mutate(parent, space, seed, n_ops=args.n_ops, avoid=args.avoid)
    if args.json:
        record = {"parent": str(parent), "child": str(child), "ops": [str(op) for op in ops]}
        print(dumps({**record, "seed": seed}))
        return 0
    print(f"{parent} -> {child}")
    for op in ops:
        print(f"  {op}")
    return 0
