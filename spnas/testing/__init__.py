"""Helpers for testing and benchmarking spnas (as ``optuna.testing``): not part of the
search API, and free to change between releases.

- :class:`LocalPostgres`: a throw-away PostgreSQL server on loopback, started from the
  PostgreSQL binaries of the machine; restartable, to test reconnection.
"""

from __future__ import annotations

from spnas.testing.postgres import LocalPostgres, PostgresUnavailable, find_pg_bin_dir
from spnas.testing.weights import randomize

__all__ = ["LocalPostgres", "PostgresUnavailable", "find_pg_bin_dir", "randomize"]
