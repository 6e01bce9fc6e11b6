"""Optuna storage and artifact store from URLs.

Storage URLs:

- ``sqlite:///path/study.db`` — one machine (the embedded default); several worker processes
  share it through SQLite's file locking.
- ``postgresql+psycopg2://user:password@host:5432/db`` — workers on many nodes. Connections are
  checked before use (``pool_pre_ping``), and while the server is down a new connection is
  retried for up to ``reconnect_timeout`` seconds (120) before an error is raised, so workers
  wait through a database restart or fail-over instead of failing.
- ``grpc://host:port`` — a ``spnas storage-proxy`` in front of the database
  (:mod:`spnas.storage_proxy`): hundreds of workers, one pool of database connections.
- ``journal:///path/study.log`` (or any path ending in ``.log``) — Optuna's journal file, for
  file systems where SQLite's locks are unreliable (some NFS mounts).

On SQLite, taking a queued trial and failing a stale one are atomic (:class:`_SQLiteStorage`),
as PostgreSQL's row locks make them there: two workers never run the same trial.

RDB storages run heartbeats (every 60 s; a trial silent for 600 s is stale) and retry a stale
trial up to twice with :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`; the retry copies the
trial's system attributes, so it keeps its SP-NAS decision.

Artifact locations: a directory (``FileSystemArtifactStore``; share it between nodes, e.g. on
NFS) or ``s3://bucket[/prefix]`` (``Boto3ArtifactStore``; needs ``boto3``).

Passwords never appear in logs or error messages: use :func:`redact` on any URL you print,
and :func:`hide_password` on any text (an exception message) that may quote a password; both
work on the URL as written, so a password pasted unencoded is hidden too (one with an '@' is
refused by :func:`make_storage`: write it percent-encoded). The
study stores its storage URL with the password removed (:func:`strip_password`); workers read
the full URL from ``--storage-file`` or the environment variable ``SPNAS_STORAGE``
(:func:`storage_url_from`), never from their command line, which ``ps`` shows to every user.

File system artifacts are written atomically (a temporary file renamed into place), so a
worker killed during an upload leaves no half-written artifact.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialModel  # private: see change_trial_state_if
from optuna.trial import TrialState

from spnas._optional import require
from spnas.exceptions import SpnasError

_logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 600
MAX_RETRY = 2
RECONNECT_TIMEOUT_S = 120.0
#: Database connections one storage keeps (a worker's main and heartbeat threads), and how
#: many more it may open at once. ``spnas worker`` opens two storages (its command's look at
#: the study, its worker loop's): N workers hold at most 6·N connections (4·N measured while
#: training; the budget in ``recipes/slurm/spnas.sbatch``).
POOL_SIZE = 2
MAX_OVERFLOW = 1

#: Environment variable holding the storage URL of ``spnas worker`` (and other commands).
STORAGE_ENV = "SPNAS_STORAGE"

# A storage URL as written: "scheme://USER:PASSWORD@HOST…". The user name holds no ':' or '/'
# (it may hold '@': Azure's "user@server"), so the password starts after the first ':' of the
# authority. The password may hold anything ('@', ':', '/', '%', '#', '?': people paste it
# unencoded), so it ends at the LAST '@' of the whitespace-free token. When the '@' was in a
# query instead, this hides too much (harmless); ending at the first '@', as SQLAlchemy and
# urllib do, would show the rest of such a password.
_PASSWORD = re.compile(r"(?P<head>[\w+.-]+://[^:/\s]*:)(?P<password>\S*)(?P<tail>@)")

# Where a parser may cut a password that it misreads as user, host, port, path or query:
# at the URL's delimiters, and around a percent escape (decoded alone, or not at all).
_CUTS = re.compile(r"[@:/?#]|%[0-9A-Fa-f]{2}|%")

#: Pieces of a password shorter than this are not hidden in free text (whole passwords are).
#: Hiding "Hx" or "a" everywhere would garble the message (every "a" of a sentence) to hide
#: at most two characters; and the misreading that would make a driver quote such a piece
#: (an unencoded '@' in the password) is refused by :func:`make_storage` before it connects.
_MIN_FRAGMENT = 3


class StorageError(SpnasError):
    """A storage or artifact store cannot be reached or created."""


class StorageUnreachableError(StorageError):
    """The database did not answer the first connection (a server down, starting or
    restarting, or a refused login): unlike a malformed URL, the same URL may work later."""


def _parse(url: str) -> Any:
    """The SQLAlchemy URL of ``url``, or ``None`` when it is not one."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # ArgumentError, ValueError: free text, not a URL
        return None


def _written_password(url: str) -> str | None:
    """The password of ``url`` as written in it (see :data:`_PASSWORD`), or ``None``."""
    match = _PASSWORD.search(str(url))
    return match["password"] if match else None


def _fragments(password: str) -> set[str]:
    """Every piece of ``password`` that starts and ends at a cut (:data:`_CUTS`).

    A parser that misreads a password splits it at delimiters only, so whatever it calls user,
    password, host, port, database or query holds such pieces: ``Zq@9:Hx/7%mK`` is read by
    SQLAlchemy as password ``Zq``, host ``9``, port ``Hx`` and database ``7%mK@…``, by urllib
    as host ``9:Hx`` and path ``/7%mK@…``; a driver's error quotes them. All pieces, not only
    the ones today's parsers make: the number is quadratic in the cuts, tiny for a password.
    """
    cuts = {0, len(password)}
    for match in _CUTS.finditer(password):
        cuts.update(match.span())
    ordered = sorted(cuts)
    return {password[i:j] for k, i in enumerate(ordered) for j in ordered[k + 1 :]}


def _secrets(url: str) -> list[str]:
    """What to hide of the password of ``url`` in any text, longest first.

    The password as written, percent-decoded, percent-encoded (as SQLAlchemy renders it), as
    SQLAlchemy read it when that agrees; and every piece of :data:`_MIN_FRAGMENT` characters
    or more that a parser may have split off (:func:`_fragments`), as written and decoded.
    """
    from urllib.parse import quote, unquote

    url = str(url)
    written = _written_password(url)
    parsed = _parse(url)
    read = None if parsed is None or parsed.password is None else str(parsed.password)
    whole: set[str] = set()
    pieces: set[str] = set()
    if written is not None:
        decoded = unquote(written)
        whole |= {written, decoded, quote(decoded, safe="")}
        for piece in _fragments(written) | _fragments(decoded):
            pieces |= {piece, unquote(piece)}
    if read is not None:
        if written is None or read == unquote(written):
            whole |= {read, quote(read, safe="")}
        else:  # a misreading: a piece of the password as written, hidden as the others are
            pieces.add(read)
    found = {s for s in whole if s} | {s for s in pieces if len(s) >= _MIN_FRAGMENT}
    return sorted(found, key=len, reverse=True)


def _hide(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, longest first (one pass)."""
    if not secrets:
        return text
    return re.sub("|".join(map(re.escape, secrets)), "***", text)


def redact(url: str) -> str:
    """``url`` (or a text quoting URLs) with every password replaced by ``***``.

    Works on the text as written (:data:`_PASSWORD`): a password is hidden whole whatever its
    characters, percent-encoded or not, even where SQLAlchemy would read the URL otherwise.
    """
    return _PASSWORD.sub(r"\g<head>***\g<tail>", str(url))


def hide_password(text: str, url: str) -> str:
    """``text`` (an exception message) with the password of ``url`` hidden wherever it occurs:
    as written, decoded or encoded, and any piece of it a parser may have split off (see
    :func:`_secrets`); and any URL's password in it redacted (:func:`redact`)."""
    return redact(_hide(str(text), _secrets(str(url))))


def _redact_exception(exc: BaseException, url: str) -> str:
    return hide_password(str(exc), url)


def strip_password(url: str) -> str:
    """``url`` without its password (the form a study stores); other URLs unchanged.

    Cut from the text as written (:data:`_PASSWORD`), so that no piece of a password with an
    unencoded '@', ':' or '/' stays behind as a user, host or path.
    """
    url = str(url)
    match = _PASSWORD.search(url)
    if match is None:
        return url
    return url[: match.start("password") - 1] + url[match.end("password") :]


def _check_password_is_readable(url: str) -> None:
    """Refuse a URL whose password holds an unencoded '@' (or that has an '@' after it).

    SQLAlchemy ends the password at the first '@': it would send a piece of the password as
    host name (to DNS), port or database, and the driver's error would quote these pieces.

    Raises:
        StorageError: naming the URL, password hidden.
    """
    password = _written_password(url)
    if password is not None and "@" in password:
        raise StorageError(
            f"storage URL {redact(url)!r}: its password holds an '@' (or an '@' follows it), "
            "so where it ends is ambiguous: write the password percent-encoded "
            "(Python: urllib.parse.quote(password, safe=''))"
        )


def storage_url_from(
    url: str | None = None, file: str | Path | None = None, *, what: str = "--storage"
) -> str:
    """The storage URL a command runs on: ``url`` (``--storage``, shown by ``ps``: avoid it
    when the URL holds a password), else the first line of ``file`` (``--storage-file``), else
    the environment variable ``SPNAS_STORAGE``.

    Raises:
        StorageError: when none is given, or the file cannot be read.
    """
    import os

    if url:
        return str(url)
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise StorageError(f"--storage-file {str(file)!r} cannot be read: {exc}") from None
        if not lines:
            raise StorageError(f"--storage-file {str(file)!r} is empty: expected a storage URL")
        return lines[0]
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    raise StorageError(f"no storage: pass {what} URL, --storage-file FILE or set {STORAGE_ENV}")


#: The storage URLs :func:`make_storage` opens: scheme (before ``://``) and its drivers.
_STORAGE_SCHEME = re.compile(r"^(grpc|journal|sqlite|(postgresql|mysql)(\+\w+)?)://")


def check_storage_url(url: str) -> None:
    """Refuse a storage URL :func:`make_storage` would not open, by its form alone: no file,
    directory or connection is made, so a search checks it before creating anything.

    Raises:
        StorageError: naming the URL (password hidden) and the forms expected.
    """
    url = str(url)
    if _STORAGE_SCHEME.match(url) or (url.endswith(".log") and "://" not in url):
        return
    raise StorageError(
        f"storage URL {redact(url)!r}: expected sqlite:///FILE, "
        "postgresql+psycopg2://USER:PASSWORD@HOST/DB, grpc://HOST:PORT or journal:///FILE.log"
    )


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
        from spnas.storage_proxy import connect_proxy

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
        _check_password_is_readable(url)
    try:
        with warnings.catch_warnings():
            # Heartbeats and retries are experimental in Optuna; we rely on them on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = _SQLiteStorage if url.startswith("sqlite:") else optuna.storages.RDBStorage
            storage = rdb(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
    except Exception as exc:  # sqlalchemy raises many types; all mean "cannot use this URL"
        error = (
            StorageUnreachableError
            if isinstance(exc, sqlalchemy.exc.OperationalError)
            else StorageError
        )
        raise error(
            f"cannot open storage {redact(url)!r}: {type(exc).__name__}: "
            f"{_redact_exception(exc, url)}"
        ) from None
    if not url.startswith("sqlite:"):
        _retry_connections(storage.engine, url, reconnect_timeout)
    return storage


def change_trial_state_if(
    storage: RDBStorage, trial: int, old: TrialState, new: TrialState, stamp: str
) -> bool:
    """Set the state of the trial with storage id ``trial`` to ``new`` only if it is ``old``,
    and its column ``stamp`` (``datetime_start`` or ``datetime_complete``) to now, in one
    conditional ``UPDATE``: atomic even on SQLite, which has no row locks. Whether it changed.

    It writes Optuna's private trials table (``optuna.storages._rdb.models.TrialModel``): the
    one use of Optuna's private API outside :mod:`spnas.search._optuna`, kept here with the
    storage that needs it; ``tests/search/test_search_optuna_adapter.py`` pins it too.
    """
    table = TrialModel.__table__
    statement = (
        sqlalchemy.update(table)
        .where(table.c.trial_id == trial, table.c.state == old)
        .values({"state": new, stamp: datetime.datetime.now()})
    )
    with storage.engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


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
                    first_line = _redact_exception(exc, url).strip().splitlines()[:1]
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


def make_artifact_store(
    location: str | Path | None,
) -> optuna.artifacts.FileSystemArtifactStore | Any:
    """The artifact store for ``location``: a directory or ``s3://bucket[/prefix]``.

    Raises:
        StorageError: when the directory cannot be created, or ``boto3`` is missing for S3.
    """
    if location is None or not str(location):
        raise StorageError("no artifact store location: expected a directory or s3://bucket")
    location = str(location)
    if location.startswith("s3://"):
        boto3 = require(
            "boto3",
            package="boto3",
            extra="s3",
            purpose=f"artifact store {location!r}",
            error=StorageError,
        )
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        from optuna.artifacts import Boto3ArtifactStore

        store = Boto3ArtifactStore(bucket, client=boto3.client("s3"))
        if prefix:
            return _PrefixedStore(store, prefix.rstrip("/") + "/")
        return store
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"artifact directory {location!r} cannot be created: {exc}") from exc
    return _AtomicFileSystemStore(str(path))


def check_artifact_store(location: str | Path) -> None:
    """Write, read back and remove a probe artifact at ``location``.

    Raises:
        StorageError: naming the location when any of the three fails (a read-only or full
            file system, a bucket that does not exist or denies access, no network).
    """
    import io
    import uuid

    store = make_artifact_store(location)
    probe = f"spnas-probe-{uuid.uuid4().hex}"
    try:
        store.write(probe, io.BytesIO(b"spnas"))
        with store.open_reader(probe) as reader:
            if reader.read() != b"spnas":
                raise OSError("the probe artifact read back differently")
        store.remove(probe)
    except Exception as exc:  # stores raise OSError, botocore errors, …
        raise StorageError(
            f"artifact store {redact(str(location))!r} is not usable: {type(exc).__name__}: {exc}"
        ) from None


class _PrefixedStore:
    """Keeps every artifact of a study under a key prefix of a shared bucket."""

    def __init__(self, store: Any, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self._store.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self._store.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self._prefix + artifact_id)


class _AtomicFileSystemStore(optuna.artifacts.FileSystemArtifactStore):
    """A file system artifact store whose writes are atomic (see :mod:`spnas._io`)."""

    @property
    def directory(self) -> Path:
        """Where the artifacts are (one file each, named by its artifact id)."""
        return Path(self._base_path)

    def write(self, artifact_id: str, content_body: Any) -> None:
        import shutil

        from spnas._io import atomic_write

        def copy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(content_body, f)

        atomic_write(self._get_filepath(artifact_id), copy)
