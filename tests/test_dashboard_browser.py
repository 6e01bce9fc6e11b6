"""``spnas dashboard`` rendered by a real (headless) Chromium: the SPA lists the study's trials.

Needs Debian's ``chromium`` (``tools/install_chromium.sh``, run by ``make setup``). Without it
the test is skipped, and fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from spnas.search import Decision, SearchConfig

STUDY = "browser-study"
SEED = "BB(11,d1,d1,d1)"
CHILD = "BB(11,d11,d1,d1)"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

pytestmark = pytest.mark.timeout(90)


def find_chromium() -> str:
    path = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    path = path or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium: run tools/install_chromium.sh (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def make_study(path: Path) -> str:
    config = SearchConfig.from_dict(
        {
            "study": {"name": STUDY},
            "model": {"seed_arch": SEED, "width": 8},
            "schedule": {"iters": 1, "min_size": 64},
        }
    )
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name=STUDY, storage=url, direction=config.direction)
    study.set_user_attr("spnas:config", config.to_dict())
    history = [
        (Decision("seed", arch=SEED), 2.0),
        (Decision("serial", arch=CHILD, parent=0, round=1), 5.0),
        (Decision("serial", arch="BB(11,d1,d11,d1)", parent=0, round=1), 3.0),
    ]
    for decision, value in history:
        study.add_trial(
            optuna.trial.create_trial(
                value=value, system_attrs=decision.to_attrs(), user_attrs={"AP": value}
            )
        )
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def dashboard(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A running ``spnas dashboard`` on a fake history; yields (base URL, study id)."""
    url = make_study(tmp_path / "spnas.db")
    study_id = optuna.storages.RDBStorage(url).get_study_id_from_name(STUDY)
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w", encoding="utf-8")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "spnas", "dashboard", "--storage", url, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    text = (tmp_path / "dashboard.log").read_text(encoding="utf-8")
                    pytest.fail(f"dashboard did not answer at {base}/:\n{text}")
                time.sleep(0.3)
        yield base, study_id
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_dashboard_lists_the_trials_in_a_browser(dashboard: tuple[str, int]) -> None:
    chromium = find_chromium()
    base, study_id = dashboard
    # optuna-dashboard 0.21 is a single-page app under /dashboard; the trial list of a study
    # is its /trials page (the study page itself shows the history graphs).
    page = f"{base}/dashboard/studies/{study_id}/trials"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                "--virtual-time-budget=15000",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert STUDY in dom
    for number in range(3):
        assert f"Trial {number}" in dom, f"trial {number} missing from the rendered page"
