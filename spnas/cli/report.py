"""``spnas report --study NAME --storage URL --out DIR``: a search's figures and summary as files.

Writes ``trajectory.png``, ``stage_flops.png``, ``ap_vs_gmacs.png`` (kaleido, with the
machine's Chromium) and a self-contained ``index.html`` (plotly.js inline: it opens offline).
"""

from __future__ import annotations

import argparse

from spnas.cli._storage import add_storage_arguments, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a search's figures (PNG) and an HTML summary to a directory",
        description="Write trajectory.png, stage_flops.png, ap_vs_gmacs.png and a "
        "self-contained index.html (best networks, phases, trials, interactive figures).",
    )
    parser.add_argument("--study", required=True, help="study name")
    add_storage_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory (created when missing)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.report import write_report
    from spnas.search import load_search_study, summarize

    url = storage_url(args)
    study, config = load_search_study(args.study, url)
    status = summarize(study.get_trials(deepcopy=False), config, args.study)
    for path in write_report(study, config, args.out, phases=status["phases"]):
        print(path)
    return 0
