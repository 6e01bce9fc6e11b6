"""``spnas verify --study NAME --storage URL [--repeats N] [--workers N]``: verification on demand.

Turns verification on for a study (a greedy one, one created with ``verify.enabled: false``, or
to add repeats), runs local workers until it is done, and prints the equal-training table: the
seed, every round's best and the best SPNet retrained from scratch (paper Fig. 4a). The
``verify`` trials are ordinary trials of the study: workers on other nodes
(``spnas worker``) take part as in the search, and a killed one is retried.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from spnas.cli._storage import add_storage_arguments, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="retrain the seed, the round bests and the best SPNet from scratch (Fig. 4a)",
        description="Verify a search at equal training: the seed, every round's best and the "
        "best SPNet retrained from scratch, --repeats seeds each, as trials of the study.",
    )
    parser.add_argument("--study", required=True, help="study name")
    add_storage_arguments(parser)
    parser.add_argument("--repeats", type=int, help="seeds per network (default: verify.repeats)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes")
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    parser.add_argument("--json", action="store_true", help="print the verification as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.cli._json import dumps
    from spnas.cli.search import _print_verification
    from spnas.exceptions import ConfigError
    from spnas.search import enable_verification, launch_workers, load_search_study, summarize

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    if args.repeats is not None and args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}: expected at least 1")
    url = storage_url(args)
    study, config = load_search_study(args.study, url)
    config = enable_verification(study, config, repeats=args.repeats)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    logs = Path(config.study.workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # With --json, stdout carries the result alone; progress goes to stderr. SIGTERM/SIGINT
    # reach the workers, which re-queue their trials, as under `spnas search`.
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        launched = launch_workers(
            args.study,
            url,
            args.workers,
            threads=threads,
            logs=logs,
            gpus_per_trial=config.verify_schedule.gpus_per_trial,
        )
    summary = summarize(study.get_trials(deepcopy=False), config, args.study)
    verify = summary["verify"]
    if args.json:
        print(dumps(verify, indent=2))
    elif verify is not None:
        _print_verification(verify, config.data.metric)
    state = launched.state
    return 0 if state is not None and state.phase == "done" else 1
