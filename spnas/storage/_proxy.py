"""Optuna's gRPC storage proxy: many workers, one database connection pool.

Every worker that opens a PostgreSQL storage holds its own connections (``make_storage``
bounds them to :data:`spnas.storage.POOL_SIZE`), so 256 workers need several hundred, against
PostgreSQL's default ``max_connections`` of 100. ``spnas storage-proxy`` (the database URL from
``--storage-file FILE`` or ``SPNAS_STORAGE``, off its command line) runs
:func:`optuna.storages.run_grpc_proxy_server` in front of the database instead: the workers
speak gRPC to it (``--storage grpc://HOST:PORT``, :mod:`spnas.storage._grpc`), and only the
proxy's ``threads`` connections reach the server. Both ends cache finished trials, so a
worker's look at the history reads only what changed.
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna

from spnas.storage._errors import StorageError
from spnas.storage._grpc import DEFAULT_PROXY_PORT, GRPC_SCHEME, import_grpc
from spnas.storage._rdb import make_storage
from spnas.storage._urls import redact

_logger = logging.getLogger(__name__)

#: Threads of the proxy, and its database connections (one per thread at most).
DEFAULT_PROXY_THREADS = 16


def serve_proxy(
    storage_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PROXY_PORT,
    threads: int = DEFAULT_PROXY_THREADS,
) -> None:
    """Serve the storage at ``storage_url`` over gRPC on ``host:port`` until interrupted.

    The database sees at most ``threads`` connections from the proxy, whatever the number of
    workers.

    Raises:
        StorageError: when the storage cannot be opened, grpcio is missing, or
            ``storage_url`` is itself a proxy.
    """
    if storage_url.startswith(GRPC_SCHEME):
        raise StorageError(f"storage {redact(storage_url)!r} is a proxy: give the database URL")
    import_grpc()
    # One connection per server thread; no overflow, so the bound holds under any load.
    backend = make_storage(storage_url, pool_size=threads, max_overflow=0)
    # The cache keeps finished trials in the proxy: a worker's look reads only what changed.
    storage = optuna.storages.get_storage(backend)
    _logger.info(
        "storage proxy for %s on %s:%d (%d threads)", redact(storage_url), host, port, threads
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.run_grpc_proxy_server(
            storage, host=host, port=port, thread_pool=ThreadPoolExecutor(max_workers=threads)
        )
