"""Optuna storages from URLs, RDB storages tuned for many workers.

Storage URLs:

- ``sqlite:///path/study.db`` — one machine (the embedded default); several worker processes
  share it through SQLite's file locking.
- ``postgresql+psycopg2://user:password@host:5432/db`` — workers on many nodes. Connections are
  checked before use (``pool_pre_ping``), and while the server is down a new connection is
  retried for up to ``reconnect_timeout`` seconds (120) before an error is raised, so workers
  wait through a database restart or fail-over instead of failing.
- ``grpc://host:port`` — a ``spnas storage-proxy`` in front of the database
  (:mod:`spnas.storage._proxy`): hundreds of workers, one pool of database connections.
- ``journal:///path/study.log`` (or any path ending in ``.log``) — Optuna's journal file, for
  file systems where SQLite's locks are unreliable (some NFS mounts).

On SQLite, taking a queued trial and failing a stale one are atomic (:class:`_SQLiteStorage`),
as PostgreSQL's row locks make them there: two workers never run the same trial.

RDB storages run heartbeats (every 60 s; a trial silent for 600 s is stale) and retry a stale
trial up to twice with :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`; the retry copies the
trial's system attributes, so it keeps its SP-NAS decision.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import optuna
import sqlalchemy
from optuna.trial import TrialState

from spnas._optional import require
from spnas.storage._errors import StorageError, StorageUnreachableError
from spnas.storage._optuna import change_trial_state_if
from spnas.storage._urls import check_password_is_readable, check_storage_url, hide_password, redact

_logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 600
MAX_RETRY = 2
RECONNECT_TIMEOUT_S = 120.0
#: Database connections one storage keeps (a worker's main and heartbeat threads), and how
#: many more it may open at once. ``spnas worker`` opens one storage: N workers hold at most
#: 3·N connections (2·N measured while training; the budget in ``recipes/slurm/spnas.sbatch``).
POOL_SIZE = 2
MAX_OVERFLOW = 1


def make_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
    reconnect_timeout: float = RECONNECT_TIMEOUT_S,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring).

    The first connection is not retried: a wrong URL or an unreachable server fails at once.
    A PostgreSQL or MySQL storage keeps ``pool_size`` connections and opens at most
    ``max_overflow`` more at once (then waits for one to be free).

    Raises:
        StorageUnreachableError: when the database does not answer the first connection
            (a :class:`StorageError`; a worker waits and tries again, a creation does not).
        StorageError: when the URL is not understood or cannot be used; the message shows the
            URL without its password.
    """
    url = str(url)
    check_storage_url(url)
    if url.startswith("grpc://"):
        require(
            "grpc",
            package="grpcio",
            extra="proxy",
            purpose=f"storage {redact(url)!r} (the storage proxy)",
            error=StorageError,
        )
        from spnas.storage._grpc import connect_proxy

        return connect_proxy(url)
    if url.startswith("journal://") or url.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal://")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path and path != url and not path.startswith(":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers write one file: wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:  # postgresql or mysql (check_storage_url)
        engine_kwargs = {
            "pool_pre_ping": True,
            "pool_recycle": 1800,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
        }
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        if url.startswith(("postgresql://", "postgresql+psycopg2://")):
            require(
                "psycopg2",
                package="psycopg2-binary",
                extra="postgres",
                purpose=f"storage {redact(url)!r}",
                error=StorageError,
            )
        check_password_is_readable(url)
    try:
        with warnings.catch_warnings():
            # Heartbeats and retries are experimental in Optuna; we rely on them on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = _SQLiteStorage if url.startswith("sqlite:") else optuna.storages.RDBStorage
            storage = _open_beside_others(
                lambda: rdb(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=max_retry
                    ),
                )
            )
    except Exception as exc:  # sqlalchemy raises many types; all mean "cannot use this URL"
        error = (
            StorageUnreachableError
            if isinstance(exc, sqlalchemy.exc.OperationalError)
            else StorageError
        )
        raise error(
            f"cannot open storage {redact(url)!r}: {type(exc).__name__}: "
            f"{hide_password(str(exc), url)}"
        ) from None
    if not url.startswith("sqlite:"):
        _retry_connections(storage.engine, url, reconnect_timeout)
    return storage


#: Attempts at opening a database whose tables another process is creating at that moment.
SCHEMA_ATTEMPTS = 5


def _open_beside_others(open_storage: Callable[[], optuna.storages.RDBStorage]) -> Any:
    """``open_storage()``, tried again while another process creates the same new database.

    Optuna creates the tables and the schema version row of a new database when it opens it,
    checking first that they are missing: two processes opening it at the same moment (a
    search being created and ``spnas status`` or a poller beside it, workers started on an
    empty file) both find them missing, and the slower fails with "table … already exists"
    or a duplicate version row. Opened again, it finds them there.
    """
    attempt = 1
    while True:
        try:
            return open_storage()
        except sqlalchemy.exc.DBAPIError as exc:
            if attempt == SCHEMA_ATTEMPTS or not _created_beside(exc):
                raise
            _logger.debug("storage created by another process meanwhile: %s", exc.orig)
        time.sleep(0.1 * attempt)
        attempt += 1


def _created_beside(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether ``exc`` says that the tables or the version row being created exist already."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):  # the version row, or PostgreSQL's types
        return True
    return "already exists" in str(exc.orig)


class _SQLiteStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with the claims of a trial atomic on SQLite.

    Optuna reads a trial's state, then writes the new one; PostgreSQL and MySQL lock the row
    in between (``SELECT … FOR UPDATE``), SQLite does not. So two workers could both take the
    same queued trial (both train it), or both fail the same stale trial (both queue its
    retry). Here these two claims are one conditional ``UPDATE`` each, which SQLite runs under
    its write lock: of several workers, exactly one changes the row, and the others get
    Optuna's own answer for a trial already claimed (``False``, or
    :class:`~optuna.exceptions.UpdateFinishedTrialError`).
    """

    #: The claims: the new state, the state it is taken from, the timestamp it sets.
    _CLAIMS: ClassVar[Mapping[TrialState, tuple[TrialState, str]]] = {
        TrialState.RUNNING: (TrialState.WAITING, "datetime_start"),
        TrialState.FAIL: (TrialState.RUNNING, "datetime_complete"),
    }

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        claim = self._CLAIMS.get(state)
        if claim is None or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        before, stamp = claim
        if change_trial_state_if(self, trial_id, before, state, stamp):
            return True
        return super().set_trial_state_values(trial_id, state)


def _retry_connections(engine: Any, url: str, timeout: float) -> None:
    """Make ``engine`` retry a failed new connection for up to ``timeout`` seconds.

    With ``pool_pre_ping``, a connection dropped by a restarting server is replaced by a new
    one; while the server is down, that new connection is what fails. Retrying it here turns a
    restart into a pause for every storage call (heartbeats included) instead of an error in
    whichever call came first.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + timeout
        delay, warned = 0.5, False
        while True:
            try:
                connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    first_line = hide_password(str(exc), url).strip().splitlines()[:1]
                    _logger.warning(
                        "database %s unreachable (%s); retrying for up to %.0f s",
                        redact(url),
                        first_line[0] if first_line else type(exc).__name__,
                        timeout,
                    )
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
                continue
            if warned:
                _logger.warning("database %s reachable again", redact(url))
            return connection
