"""Fixtures shared by the whole test tree.

``postgresql_server`` (session): a throw-away PostgreSQL server for the tests marked
``postgres``. It runs the PostgreSQL binaries (``initdb``, ``pg_ctl``) from
``/usr/lib/postgresql/*/bin`` or ``PATH``; they refuse to run as root, so as root they run as
the ``postgres`` user in a temporary directory handed to it. The server listens on 127.0.0.1
on a free port with trust authentication and ``fsync=off``, and is stopped at the end of the
session. Without the binaries the fixture skips — and fails when ``CI`` is set, so a CI image
that lost PostgreSQL does not silently stop testing it.

``postgresql_url`` (session): ``postgresql+psycopg2://postgres@127.0.0.1:PORT/spnas_test``.
Use ``postgresql_server.new_database(name)`` for a database of a test's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_PG_USER = "postgres"


@dataclasses.dataclass
class PostgresServer:
    """A running PostgreSQL server: ``url`` of its test database, and more on demand."""

    host: str
    port: int
    user: str
    data_dir: Path
    database: str

    @property
    def url(self) -> str:
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create database ``name`` (dropping an old one of that name); returns its URL."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", connect_timeout=10
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_of(name)


def _pg_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as_owner(command: list[str], as_postgres: bool, timeout: float = 120) -> None:
    text = " ".join(shlex.quote(part) for part in command)
    args = ["su", _PG_USER, "-s", "/bin/sh", "-c", text] if as_postgres else ["sh", "-c", text]
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


def _wait_ready(host: str, port: int, timeout: float = 60) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(
                host=host, port=port, user=_PG_USER, dbname="postgres", connect_timeout=5
            ).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        _unavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed")
    as_postgres = os.geteuid() == 0
    if as_postgres:
        try:
            import pwd

            owner = pwd.getpwnam(_PG_USER)
        except KeyError:
            _unavailable(f"running as root and there is no {_PG_USER!r} user to run PostgreSQL")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="spnas-pg-"))
    root.chmod(0o755)
    data_dir = root / "data"
    log = root / "server.log"
    if as_postgres:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    _run_as_owner(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            _PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        as_postgres,
    )
    server = None
    try:
        for attempt in range(5):
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off "
                f"-c unix_socket_directories={root} -c max_connections=200"
            )
            try:
                _run_as_owner(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        options,
                        "start",
                    ],
                    as_postgres,
                )
            except RuntimeError:
                if attempt == 4:
                    raise RuntimeError(
                        f"PostgreSQL did not start; its log:\n{log.read_text(errors='replace')}"
                    ) from None
                continue  # the port was taken in between: try another
            break
        server = PostgresServer("127.0.0.1", port, _PG_USER, data_dir, "spnas_test")
        _wait_ready(server.host, server.port)
        server.new_database(server.database)
        yield server
    finally:
        if server is not None or (data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run_as_owner(
                    [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"],
                    as_postgres,
                    timeout=60,
                )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_url(postgresql_server: PostgresServer) -> str:
    return postgresql_server.url
