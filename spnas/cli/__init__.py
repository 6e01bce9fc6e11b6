"""The ``spnas`` command line.

Each sub-command lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a callable taking
the parsed namespace and returning an exit code. Modules are imported only to build the parser;
heavy dependencies (torch, detectron2) are imported inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from spnas.exceptions import SpnasError

_COMMAND_MODULES = (
    "flops",
    "data",
    "mutate",
    "pretrain",
    "train-eval",
    "search",
    "storage-proxy",
    "verify",
    "gc",
    "dashboard",
    "report",
    "export",
    "train",
    "infer",
)

_logger = logging.getLogger("spnas")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spnas", description="SP-NAS serial-to-parallel detection backbone search."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"spnas.cli.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except SpnasError as exc:
        print(f"spnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spnas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
