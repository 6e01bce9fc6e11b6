"""``spnas gc --study NAME --storage URL [--min-age SECONDS]``: delete what killed workers left.

Workers clean up after themselves, and every worker does this when it starts; after workers
were killed (SIGKILL, a lost node) and none is started again, this deletes at once the weights
no trial can use, the half-written uploads older than ``--min-age`` and the weights left in
finished trials' folders. Running trials are not touched, so it is safe during a search.
"""

from __future__ import annotations

import argparse

from spnas.cli._storage import add_storage_arguments, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="delete orphan weights, killed uploads and finished trials' scratch files",
        description="Delete the weights that no trial can use (of failed trials, or recorded "
        "by none), temporary files of killed uploads, and weights left in the folders of "
        "finished trials. Running trials are not touched.",
    )
    parser.add_argument("--study", required=True, help="study name")
    add_storage_arguments(parser)
    parser.add_argument(
        "--min-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help=(
            "age after which a stored file that no trial records, or a checkpoint folder of a "
            "decision that no trial runs or waits to run, is deleted (default: 3600)"
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas.exceptions import ConfigError
    from spnas.search import collect_garbage, load_search_study
    from spnas.storage import make_artifact_store

    options = {}
    if args.min_age is not None:
        if args.min_age < 0:
            raise ConfigError(f"--min-age {args.min_age}: expected seconds >= 0")
        options["min_age"] = args.min_age
    study, config = load_search_study(args.study, storage_url(args))
    store = make_artifact_store(config.study.artifacts)
    garbage = collect_garbage(study, config, store, **options)
    print(
        f"deleted {len(garbage.artifacts)} artifact(s) from {config.study.artifacts}, the "
        f"scratch files of {len(garbage.trial_dirs)} finished trial folder(s) and "
        f"{len(garbage.checkpoints)} checkpoint folder(s) no retry resumes from"
    )
    return 0
