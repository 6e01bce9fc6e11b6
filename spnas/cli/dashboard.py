"""``spnas dashboard --storage URL [--port P] [--host H]``: optuna-dashboard for a search."""

from __future__ import annotations

import argparse

from spnas.cli._storage import add_storage_arguments, storage_url


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="open optuna-dashboard on a search's storage",
        description="Serve optuna-dashboard for the studies in STORAGE: trials with their "
        "notes, and the search figures (trajectory, per-stage GMACs, AP against GMACs).",
    )
    add_storage_arguments(parser)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)"
    )
    parser.add_argument("--artifacts", help="artifact location, to browse the weights")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas._optional import require
    from spnas.storage import make_artifact_store, make_storage, redact

    dashboard = require(
        "optuna_dashboard", package="optuna-dashboard", extra="dashboard", purpose="spnas dashboard"
    )
    url = storage_url(args)
    storage = make_storage(url)
    store = make_artifact_store(args.artifacts) if args.artifacts else None
    print(f"optuna-dashboard for {redact(url)} at http://{args.host}:{args.port}/")
    dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    return 0
