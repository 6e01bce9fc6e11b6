"""Optuna storage and artifact store from URLs.

Storage URLs:

- ``sqlite:///path/study.db`` — one machine (the embedded default); several worker processes
  share it through SQLite's file locking.
- ``postgresql+psycopg2://user:password@host:5432/db`` — workers on many nodes. Connections are
  checked before use (``pool_pre_ping``), so a restarted server is reconnected to.
- ``journal:///path/study.log`` (or any path ending in ``.log``) — Optuna's journal file, for
  file systems where SQLite's locks are unreliable (some NFS mounts).

RDB storages run heartbeats (every 60 s; a trial silent for 600 s is stale) and retry a stale
trial up to twice with :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`; the retry copies the
trial's system attributes, so it keeps its SP-NAS decision.

Artifact locations: a directory (``FileSystemArtifactStore``; share it between nodes, e.g. on
NFS) or ``s3://bucket[/prefix]`` (``Boto3ArtifactStore``; needs ``boto3``).

Passwords never appear in logs or error messages: use :func:`redact` on any URL you print.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import optuna

from spnas.exceptions import SpnasError

_logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 600
MAX_RETRY = 2

_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]+:)(?P<password>[^@]*)(?P<tail>@)"
)


class StorageError(SpnasError):
    """A storage or artifact store cannot be reached or created."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", str(url))


def _redact_exception(exc: BaseException, url: str) -> str:
    text = str(exc)
    password = _PASSWORD.search(url)
    if password and password["password"]:
        text = text.replace(password["password"], "***")
    return redact(text)


def default_storage_url(directory: str | Path = ".") -> str:
    """The embedded default: an SQLite file ``spnas.db`` in ``directory``."""
    return f"sqlite:///{Path(directory).resolve() / 'spnas.db'}"


def make_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring).

    Raises:
        StorageError: when the database cannot be reached or the URL is not understood; the
            message shows the URL without its password.
    """
    url = str(url)
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
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 1800}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    else:
        raise StorageError(
            f"storage URL {redact(url)!r}: expected sqlite:///FILE, "
            "postgresql+psycopg2://USER:PASSWORD@HOST/DB or journal:///FILE.log"
        )
    try:
        with warnings.catch_warnings():
            # Heartbeats and retries are experimental in Optuna; we rely on them on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
    except Exception as exc:  # sqlalchemy raises many types; all mean "cannot use this URL"
        raise StorageError(
            f"cannot open storage {redact(url)!r}: {type(exc).__name__}: "
            f"{_redact_exception(exc, url)}"
        ) from None


def make_artifact_store(location: str | Path) -> optuna.artifacts.FileSystemArtifactStore | Any:
    """The artifact store for ``location``: a directory or ``s3://bucket[/prefix]``.

    Raises:
        StorageError: when the directory cannot be created, or ``boto3`` is missing for S3.
    """
    location = str(location)
    if location.startswith("s3://"):
        try:
            import boto3
        except ImportError as exc:
            raise StorageError(
                f"artifact store {location!r} needs boto3: pip install boto3"
            ) from exc
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
    return optuna.artifacts.FileSystemArtifactStore(str(path))


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
