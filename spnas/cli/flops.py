"""``spnas flops CODE [--parallel CODE] [--width 64] [--input HxW] [--stem S] [--json]``."""

from __future__ import annotations

import argparse

from spnas.cli._json import dumps
from spnas.exceptions import ConfigError


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` or ``"224"`` → ``(224, 224)``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 32:
        raise ConfigError(f"input size {text!r}: expected HxW with both sides ≥ 32, e.g. 224x224")
    return size  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="GMACs, parameters and per-stage cost of an architecture",
        description="Count multiply-adds (GMACs, fvcore convention) and parameters of a "
        "backbone, with the per-stage allocation of paper Fig. 4b.",
    )
    parser.add_argument("code", help='serial code, e.g. "BNB(111,d111,d11111,d11)"')
    parser.add_argument("--parallel", help='parallel code, e.g. "(0,1,2,0)"')
    parser.add_argument("--width", type=int, default=64, help="base width (default 64)")
    parser.add_argument("--stem", default="resnet", choices=("resnet", "deep"))
    parser.add_argument("--input", default="224x224", help="input size HxW (default 224x224)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.arch import ParallelCode, SearchSpace, SerialCode

    code = SerialCode.parse(args.code)
    parallel = None
    if args.parallel:
        parallel = SearchSpace(max_subnets=10**6).validate_parallel(args.parallel, code)
    size = parse_size(args.input)
    if args.width < 1:
        raise ConfigError(f"--width {args.width}: expected a positive integer")

    from spnas.modeling.flops import cost

    report = cost(code, parallel, base_width=args.width, stem=args.stem, input_size=size)
    if args.json:
        print(dumps(report.to_dict(), indent=2))
        return 0
    label = f"{code}" + (f" {ParallelCode.parse(parallel)}" if parallel else "")
    print(f"{label}  width {args.width}  stem {args.stem}  input {size[0]}x{size[1]}")
    print(f"{'part':<8} {'GMACs':>9} {'share':>7} {'params (M)':>11}")
    print(f"{'stem':<8} {report.stem_gmacs:>9.3f} {report.stem_gmacs / report.gmacs:>7.1%}")
    for stage in report.stages:
        print(
            f"{stage.name:<8} {stage.gmacs:>9.3f} {stage.gmacs / report.gmacs:>7.1%} "
            f"{stage.params_m:>11.3f}"
        )
    print(f"{'total':<8} {report.gmacs:>9.3f} {1:>7.1%} {report.params_m:>11.3f}")
    return 0
