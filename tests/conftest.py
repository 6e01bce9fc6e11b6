"""Fixtures shared by the whole test tree.

``postgresql_server`` (session): a throw-away :class:`spnas.testing.LocalPostgres` server
for the tests marked ``postgres`` (loopback, free port, trust authentication, ``fsync=off``),
stopped at the end of the session. Without the binaries the fixture skips — and fails when
``CI`` is set, so a CI image that lost PostgreSQL does not silently stop testing it.

``one_torch_thread`` (module): torch runs one thread for the module's tests. Tiny networks are
as fast on one, and two threads on a busy 2-core machine can be 10-50x slower (measured).
Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.

``postgresql_url`` (session): ``postgresql+psycopg2://postgres@127.0.0.1:PORT/spnas_test``.
Use ``postgresql_server.new_database(name)`` for a database of a test's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
