"""The client end of Optuna's gRPC storage proxy: ``grpc://HOST:PORT`` URLs.

Through the proxy, Optuna records no heartbeats (:class:`optuna.storages.GrpcStorageProxy`
implements none). spnas workers beat through the storage's ordinary API instead
(:mod:`spnas.search._liveness`): a running trial writes a new number into its system attribute
``spnas:beat`` every ``search.beat_seconds``, and the waiting workers fail and retry, with its
decision, a trial whose beat stood still for ``search.beat_grace_seconds`` (by their own
clocks, so clock skew between nodes does not matter). A worker that was SIGKILLed or lost its
node therefore stalls nobody for longer than the grace period.

Needs ``grpcio`` and ``protobuf`` (the ``proxy`` extra).
"""

from __future__ import annotations

import warnings

import optuna

from spnas.storage._errors import StorageError
from spnas.storage._urls import redact

GRPC_SCHEME = "grpc://"
DEFAULT_PROXY_PORT = 13000
#: How long a worker waits for the proxy to answer before its storage fails.
CONNECT_TIMEOUT_S = 30.0


def import_grpc() -> None:
    """Raises :class:`StorageError` when grpcio is missing."""
    try:
        import grpc  # noqa: F401
    except ImportError as exc:
        raise StorageError(
            "the gRPC storage proxy needs grpcio and protobuf: pip install grpcio protobuf"
        ) from exc


def parse_grpc_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``grpc://HOST[:PORT]`` (port :data:`DEFAULT_PROXY_PORT` when omitted).

    Raises:
        StorageError: naming the URL when it has no host or a port that is not a number.
    """
    rest = url.removeprefix(GRPC_SCHEME).rstrip("/")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    # A proxy takes no user or password: with one, the "host" would be a piece of a password,
    # looked up in DNS and quoted in errors.
    if not host or "@" in rest or (port and not port.isdigit()):
        raise StorageError(f"storage URL {redact(url)!r}: expected grpc://HOST:PORT")
    return host, int(port) if port else DEFAULT_PROXY_PORT


def connect_proxy(url: str, timeout: float = CONNECT_TIMEOUT_S) -> optuna.storages.BaseStorage:
    """A storage that talks to the proxy at ``grpc://HOST:PORT``, once it answers.

    Raises:
        StorageError: when the URL is malformed, grpcio is missing, or the proxy does not
            answer within ``timeout`` seconds.
    """
    host, port = parse_grpc_url(url)
    import_grpc()
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
