"""Storage for hundreds of workers: bounded PostgreSQL pools, grpc:// URLs, the proxy.

The proxy end to end (``spnas storage-proxy`` serving a study, a worker through it) runs in
``tests/test_recipes.py`` with the Kubernetes recipe's own command lines.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from spnas.storage import (
    DEFAULT_PROXY_PORT,
    MAX_OVERFLOW,
    POOL_SIZE,
    STORAGE_ENV,
    StorageError,
    connect_proxy,
    make_storage,
    parse_grpc_url,
    serve_proxy,
)

pytestmark = pytest.mark.processes


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://proxy:13001", ("proxy", 13001)),
        ("grpc://10.0.0.5", ("10.0.0.5", DEFAULT_PROXY_PORT)),
        ("grpc://spnas-storage-proxy:13000/", ("spnas-storage-proxy", 13000)),
    ],
)
def test_grpc_urls_give_host_and_port(url: str, expected: tuple[str, int]) -> None:
    assert parse_grpc_url(url) == expected


@pytest.mark.parametrize("url", ["grpc://", "grpc://host:port", "grpc://:13000"])
def test_a_malformed_grpc_url_names_itself(url: str) -> None:
    with pytest.raises(StorageError, match="expected grpc://HOST:PORT") as info:
        parse_grpc_url(url)
    assert repr(url) in str(info.value)


def test_no_proxy_at_the_url_fails_after_the_timeout_naming_the_command() -> None:
    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StorageError, match="spnas storage-proxy") as info:
        connect_proxy(f"grpc://127.0.0.1:{port}", timeout=1.0)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert 1.0 <= time.monotonic() - started < 15.0


def test_the_proxy_refuses_to_serve_a_proxy() -> None:
    with pytest.raises(StorageError, match="is a proxy"):
        serve_proxy("grpc://127.0.0.1:13000")


@pytest.mark.postgres
def test_postgresql_connections_of_a_process_are_bounded(postgresql_server) -> None:
    """Each process keeps at most POOL_SIZE connections and opens MAX_OVERFLOW more: 256
    workers once held about 4 each, above PostgreSQL's default max_connections of 100."""
    url = postgresql_server.new_database("pool_bound")
    pool = make_storage(url).engine.pool
    assert (pool.size(), pool._max_overflow) == (POOL_SIZE, MAX_OVERFLOW)
    proxy_pool = make_storage(url, pool_size=16, max_overflow=0).engine.pool
    assert (proxy_pool.size(), proxy_pool._max_overflow) == (16, 0)


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_the_proxy_takes_the_database_url_like_every_command(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--storage-file`` and ``SPNAS_STORAGE`` keep the password off the command line."""
    import spnas.storage
    from spnas.cli import main

    url = "postgresql+psycopg2://spnas:secret@db:5432/spnas"
    served: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        spnas.storage, "serve_proxy", lambda storage, **kw: served.append((storage, kw))
    )
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    argv = ["storage-proxy", "--port", "13001", "--threads", "4"]
    if source == "file":
        secret = tmp_path / "storage"
        secret.write_text(url + "\n")
        argv += ["--storage-file", str(secret)]
    elif source == "env":
        monkeypatch.setenv(STORAGE_ENV, url)
    else:
        argv += ["--storage", url]
    assert main(argv) == 0
    assert served == [(url, {"host": "127.0.0.1", "port": 13001, "threads": 4})]


def test_the_proxy_without_a_storage_names_the_ways_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.cli import main

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert main(["storage-proxy"]) == 2
    assert f"--storage-file FILE or set {STORAGE_ENV}" in capsys.readouterr().err
