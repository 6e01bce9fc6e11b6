"""The storage layer: Optuna storages and artifact stores from URLs, at the bottom of spnas.

- :func:`make_storage` opens ``sqlite:///FILE``, ``postgresql+psycopg2://…``,
  ``grpc://HOST:PORT`` (a ``spnas storage-proxy``, :func:`serve_proxy`) or ``journal:///FILE.log``
  (:mod:`spnas.storage._rdb` says what each is for and how it is tuned);
  :func:`make_artifact_store` a directory or ``s3://bucket[/prefix]``.
- Storage URLs hold passwords: :func:`redact`, :func:`hide_password` and
  :func:`strip_password` keep them out of logs, errors and the study
  (:mod:`spnas.storage._urls`); :func:`storage_url_from` reads the URL off the command line.
- The few storage-level uses of Optuna's private API (:mod:`spnas.storage._optuna`): one
  conditional state change, one transaction for several params, heartbeat settings, and the
  trials killed before their first heartbeat.

Nothing here imports another spnas package but :mod:`spnas.exceptions` and
:mod:`spnas._optional`.
"""

from __future__ import annotations

from spnas.storage._artifacts import check_artifact_store, make_artifact_store
from spnas.storage._errors import StorageError, StorageUnreachableError
from spnas.storage._grpc import CONNECT_TIMEOUT_S, DEFAULT_PROXY_PORT, connect_proxy, parse_grpc_url
from spnas.storage._optuna import (
    change_trial_state_if,
    heartbeat_interval,
    is_heartbeat_enabled,
    silent_trials,
    update_trial,
)
from spnas.storage._proxy import DEFAULT_PROXY_THREADS, serve_proxy
from spnas.storage._rdb import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    MAX_OVERFLOW,
    MAX_RETRY,
    POOL_SIZE,
    RECONNECT_TIMEOUT_S,
    make_storage,
)
from spnas.storage._urls import (
    STORAGE_ENV,
    check_storage_url,
    hide_password,
    redact,
    storage_url_from,
    strip_password,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_PROXY_PORT",
    "DEFAULT_PROXY_THREADS",
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "MAX_OVERFLOW",
    "MAX_RETRY",
    "POOL_SIZE",
    "RECONNECT_TIMEOUT_S",
    "STORAGE_ENV",
    "StorageError",
    "StorageUnreachableError",
    "change_trial_state_if",
    "check_artifact_store",
    "check_storage_url",
    "connect_proxy",
    "heartbeat_interval",
    "hide_password",
    "is_heartbeat_enabled",
    "make_artifact_store",
    "make_storage",
    "parse_grpc_url",
    "redact",
    "serve_proxy",
    "silent_trials",
    "storage_url_from",
    "strip_password",
    "update_trial",
]
