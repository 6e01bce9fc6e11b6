"""The ``spnas`` command line.

Each module of this package registers one command, or a group of commands that share their
code (``search.py``: ``search``, ``worker``, ``status``, ``resume``), through
``register(subparsers) -> None``, which adds the parsers and sets ``func`` to a callable taking
the parsed namespace and returning an exit code. Modules are imported only to build the parser;
heavy dependencies (torch, detectron2) are imported inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from spnas.cli._warnings import silence_known_warnings
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


#: The exit status of a command whose reader closed the pipe (``spnas … | head``): 128 + SIGPIPE,
#: what a shell reports for a command killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        silence_known_warnings()
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, not at exit
        return status
    except BrokenPipeError:
        # The reader is gone (``| head``): stop quietly. Python flushes stdout again at exit;
        # pointing it at devnull keeps that flush from raising a second time (the recipe of
        # the Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except SpnasError as exc:
        print(f"spnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spnas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
