"""Fixtures shared by the whole test tree.

``postgresql_server`` (session): a throw-away :class:`spnas.testing.LocalPostgres` server
for the tests marked ``postgres`` (loopback, free port, trust authentication, ``fsync=off``),
stopped at the end of the session. Without the binaries the fixture skips — and fails when
``CI`` is set, so a CI image that lost PostgreSQL does not silently stop testing it.

``postgresql_url`` (session): ``postgresql+psycopg2://postgres@127.0.0.1:PORT/spnas_test``.
Use ``postgresql_server.new_database(name)`` for a database of a test's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from spnas.testing import LocalPostgres, PostgresUnavailable


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    try:
        server.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run in CI: {exc}")
        pytest.skip(str(exc))
    try:
        server.new_database("spnas_test")
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgresql_url(postgresql_server: LocalPostgres) -> str:
    return postgresql_server.url_of("spnas_test")
