"""Optuna's gRPC storage proxy: many workers, one database connection pool.

Every worker that opens a PostgreSQL storage holds its own connections (``make_storage``
bounds them to :data:`spnas.storage.POOL_SIZE`), so 256 workers need several hundred, against
PostgreSQL's default ``max_connections`` of 100. ``spnas storage-proxy`` (the database URL from
``--storage-file FILE`` or ``SPNAS_STORAGE``, off its command line) runs
:func:`optuna.storages.run_grpc_proxy_server` in front of the database instead: the workers
speak gRPC to it (``--storage grpc://HOST:PORT``), and only the proxy's ``threads``
connections reach the server. Both ends cache finished trials, so a worker's look at the
history reads only what changed.

Through the proxy, Optuna records no heartbeats (:class:`optuna.storages.GrpcStorageProxy`
implements none). spnas workers beat through the storage's ordinary API instead
(:mod:`spnas.search._liveness`): a running trial writes a new number into its system attribute
``spnas:beat`` every ``search.beat_seconds``, and the waiting workers fail and retry, with its
decision, a trial whose beat stood still for ``search.beat_grace_seconds`` (by their own
clocks, so clock skew between nodes does not matter). A worker that was SIGKILLed or lost its
node therefore stalls nobody for longer than the grace period.

Needs ``grpcio`` and ``protobuf`` (``requirements.txt``).
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna

from spnas.storage import StorageError, make_storage, redact

_logger = logging.getLogger(__name__)

GRPC_SCHEME = "grpc://"
DEFAULT_PORT = 13000
#: Threads of the proxy, and its database connections (one per thread at most).
DEFAULT_THREADS = 16
#: How long a worker waits for the proxy to answer before its storage fails.
CONNECT_TIMEOUT_S = 30.0


def _import_grpc() -> None:
    try:
        import grpc  # noqa: F401
    except ImportError as exc:
        raise StorageError(
            "the gRPC storage proxy needs grpcio and protobuf: pip install grpcio protobuf"
        ) from exc


def parse_grpc_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``grpc://HOST[:PORT]`` (port :data:`DEFAULT_PORT` when omitted).

    Raises:
        StorageError: naming the URL when it has no host or a port that is not a number.
    """
    rest = url.removeprefix(GRPC_SCHEME).rstrip("/")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    # A proxy takes no user or password: with one, the "host" would be a piece of a password,
    # looked up in DNS and quoted in errors.
    if not host or "@" in rest or (port and not port.isdigit()):
        raise StorageError(f"storage URL {redact(url)!r}: expected grpc://HOST:PORT")
    return host, int(port) if port else DEFAULT_PORT


def connect_proxy(url: str, timeout: float = CONNECT_TIMEOUT_S) -> optuna.storages.BaseStorage:
    """A storage that talks to the proxy at ``grpc://HOST:PORT``, once it answers.

    Raises:
        StorageError: when the URL is malformed, grpcio is missing, or the proxy does not
            answer within ``timeout`` seconds.
    """
    host, port = parse_grpc_url(url)
    _import_grpc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError:
        storage.close()
        raise StorageError(
            f"no storage proxy answers at {redact(url)!r} after {timeout:.0f} s: start it with "
            f"`spnas storage-proxy --storage-file FILE --host {host} --port {port}`"
        ) from None
    return storage


def serve(
    storage_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    threads: int = DEFAULT_THREADS,
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
    _import_grpc()
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
