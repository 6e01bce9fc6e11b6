"""Helpers for testing and benchmarking spnas (as ``optuna.testing``): not part of the
search API, and free to change between releases.

- :class:`LocalPostgres`: a throw-away PostgreSQL server on loopback, started from the
  PostgreSQL binaries of the machine; restartable, to test reconnection.
"""

from __future__ import annotations

from spnas._lazy import lazy_getattr

# Loaded on first use: a benchmark's light workers fork from a process that needs only the
# server, not torch (``randomize``).
_API = {
    "LocalPostgres": "postgres",
    "PostgresUnavailable": "postgres",
    "find_pg_bin_dir": "postgres",
    "randomize": "weights",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
