"""A throw-away PostgreSQL server for tests and benchmarks.

:class:`LocalPostgres` runs the PostgreSQL binaries (``initdb``, ``pg_ctl``) found in
``/usr/lib/postgresql/*/bin`` or on ``PATH``. They refuse to run as root, so as root they run
as the ``postgres`` user, in a temporary directory handed to it. The server listens on
127.0.0.1 on a free port, with trust authentication and ``fsync=off`` (nothing it holds needs
to survive a crash of the machine), and is removed with its directory by :meth:`close`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from spnas.exceptions import SpnasError

_PG_USER = "postgres"


class PostgresUnavailable(SpnasError, RuntimeError):
    """This machine cannot run a PostgreSQL server (no binaries, no driver, no user)."""


def find_pg_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest version first), or ``None``."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1 in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`close`::

        with LocalPostgres() as server:
            url = server.new_database("bench")   # postgresql+psycopg2://postgres@127.0.0.1:…

    Args:
        max_connections: the server's ``max_connections`` (each worker holds a few).

    Raises:
        PostgresUnavailable: from :meth:`start`, when binaries, driver or user are missing.
    """

    user = _PG_USER
    host = "127.0.0.1"

    def __init__(self, max_connections: int = 200) -> None:
        self.max_connections = max_connections
        self.port: int | None = None
        self.root: Path | None = None
        self._bin_dir: Path | None = None
        self._as_postgres = os.geteuid() == 0

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> LocalPostgres:
        """Create the cluster and start the server; returns ``self``."""
        self._bin_dir = find_pg_bin_dir()
        if self._bin_dir is None:
            raise PostgresUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise PostgresUnavailable("psycopg2 is not installed") from None
        owner = None
        if self._as_postgres:
            import pwd

            try:
                owner = pwd.getpwnam(_PG_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {_PG_USER!r} user to run PostgreSQL"
                ) from None
        self.root = Path(tempfile.mkdtemp(prefix="spnas-pg-"))
        self.root.chmod(0o755)
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                _PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            self._start_on_free_port()
        except BaseException:
            self.close()
            raise
        return self

    def _start_on_free_port(self) -> None:
        for attempt in range(5):
            self.port = _free_port()
            try:
                self._pg_ctl_start()
                return
            except RuntimeError:
                if attempt == 4:
                    raise RuntimeError(
                        f"PostgreSQL did not start; its log:\n{self.log()}"
                    ) from None

    def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off "
            f"-c unix_socket_directories={self.root} -c max_connections={self.max_connections}"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect every client; ``immediate``: like a crash)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=60)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server (dropping every connection), wait ``down_seconds``, start it again
        on the same port."""
        self.stop("fast")
        time.sleep(down_seconds)
        self._pg_ctl_start()

    def close(self) -> None:
        """Stop the server (if running) and delete its directory."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- use --------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the server was not started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "the server was not started"
        return self.root / "server.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def url_of(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (no password: trust auth)."""
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

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the server accepts connections."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(
                    host=self.host, port=self.port, user=self.user, dbname="postgres",
                    connect_timeout=5,
                ).close()  # fmt: skip
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        assert self._bin_dir is not None
        command = [str(self._bin_dir / tool), *args]
        text = " ".join(shlex.quote(part) for part in command)
        shell = (
            ["su", _PG_USER, "-s", "/bin/sh", "-c", text]
            if self._as_postgres
            else ["sh", "-c", text]
        )
        result = subprocess.run(shell, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
