"""``spnas storage-proxy [--storage-file FILE] [--host H --port P --threads N]``: one gRPC
proxy in front of the database, so that hundreds of workers (``--storage grpc://H:P``) share
its ``N`` connections (:func:`spnas.storage.serve_proxy`). The database URL comes, like every
command's, from ``--storage-file FILE``, the environment variable ``SPNAS_STORAGE`` or
``--storage URL`` (shown by ``ps``: only for URLs without a password)."""

from __future__ import annotations

import argparse

from spnas.cli._storage import add_storage_arguments, storage_url
from spnas.storage import DEFAULT_PROXY_PORT, DEFAULT_PROXY_THREADS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "storage-proxy",
        help="serve a database to many workers over gRPC (workers: --storage grpc://HOST:PORT)",
        description="Run Optuna's gRPC storage proxy for the database (--storage-file, "
        "SPNAS_STORAGE or --storage); workers given --storage grpc://HOST:PORT share its "
        "--threads database connections. Runs until interrupted.",
    )
    add_storage_arguments(parser, "database URL (postgresql+psycopg2://…)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PROXY_PORT, help="port to listen on")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_PROXY_THREADS,
        help="server threads, and the most database connections the proxy opens",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spnas._optional import require
    from spnas.storage import serve_proxy

    require("grpc", package="grpcio", extra="proxy", purpose="spnas storage-proxy")
    serve_proxy(storage_url(args), host=args.host, port=args.port, threads=args.threads)
    return 0
