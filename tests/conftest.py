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

Under ``make test`` the suite runs in two pytest processes (pytest-xdist, ``--dist loadgroup``);
see :func:`pytest_collection_modifyitems` for how tests are grouped, and each process runs
torch (and the processes it starts) on one thread, so that two never share a core.

``mini_coco`` (session): a miniature COCO release, in COCO's own layout (``train2017/``,
``val2017/``, ``annotations/instances_{train,val}2017.json``, 12-digit JPEG names, image ids
unique across the splits): 24 + 8 synthetic 96 px images of 2 shape classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spnas.testing import LocalPostgres, PostgresUnavailable

#: Set in each process of a parallel run (pytest-xdist).
_PARALLEL = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if _PARALLEL:
    # Two pytest processes on two cores: a second thread each would only oversubscribe them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups and orders the tests of a parallel run (xdist reads the groups after this hook).

    A module's tests stay in one process, so that its module fixtures (a trained detector, a
    pretrained backbone) are built once. The modules marked ``processes`` start workers,
    servers or proxies and time their heartbeats: they form one group, so that two of them
    never run at once. Groups start heaviest first (``processes``, then by their count of
    ``slow`` tests) so that no long one is left to run alone at the end.
    """
    if not _PARALLEL:
        return
    groups: dict[str, str] = {}
    slow: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = "processes" if item.get_closest_marker("processes") else module
        groups[item.nodeid] = group
        slow[group] = slow.get(group, 0) + (item.get_closest_marker("slow") is not None)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: (groups[item.nodeid] != "processes", -slow[groups[item.nodeid]]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """Stops a parallel run whose groups pytest-xdist dropped (in the controlling process).

    xdist's ``loadgroup`` names a test's group by renaming its node id (``…@group``); with a
    pytest whose node ids it can no longer rename (9.2, pytest-xdist#1386) it drops the groups
    without a word, and the suite then builds module fixtures in both processes and runs the
    tests that time worker processes beside each other.
    """
    config = getattr(node, "config", None)
    if config is None or config.getvalue("dist") != "loadgroup":
        return
    lost = [nodeid for nodeid in ids if "@" not in nodeid]
    if lost:
        pytest.exit(
            f"pytest-xdist did not group {len(lost)} of {len(ids)} tests (first: {lost[0]}) "
            f"under pytest {pytest.__version__} with --dist loadgroup (pytest-xdist#1386): "
            "install the pytest that requirements.txt pins",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


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


@pytest.fixture(scope="session")
def mini_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from spnas.data import make_synthetic_dataset

    made = tmp_path_factory.mktemp("synthetic")
    synthetic = make_synthetic_dataset(
        made, train=24, val=8, size=96, classes=2, seed=0, show_progress=False
    )
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    first_id = 1
    for split, json_path in (("train2017", synthetic.train_json), ("val2017", synthetic.val_json)):
        data = json.loads(json_path.read_text())
        (root / split).mkdir()
        new_ids = {img["id"]: first_id + k for k, img in enumerate(data["images"])}
        first_id += len(new_ids)
        for img in data["images"]:
            name = f"{new_ids[img['id']]:012d}.jpg"
            with Image.open(synthetic.image_root / img["file_name"]) as image:
                image.convert("RGB").save(root / split / name, quality=95)
            img["id"], img["file_name"] = new_ids[img["id"]], name
        for ann in data["annotations"]:
            ann["image_id"] = new_ids[ann["image_id"]]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root
