"""Every artifact ``spnas dashboard`` lists for a finished search downloads.

The search deletes the weights that can no longer be parents (``search.keep_top_k``); the
dashboard must stop listing them (before: a listed ``model_final.pth`` per trial, most of them
deleted, HTTP 500 on download). The test asks a running ``spnas dashboard`` what its web app
asks (``/api/studies/<id>``, each trial's ``artifacts``) and downloads each listed artifact
from the URL the app links to.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from spnas.search import WEIGHTS_ATTR

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_every_listed_artifact_downloads(finished_search: Any, tmp_path: Path) -> None:
    config, _, _ = finished_search
    storage = config.study.storage
    study = optuna.load_study(study_name=config.study.name, storage=storage)
    with_weights = [t for t in study.trials if WEIGHTS_ATTR in t.user_attrs]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "dashboard.log").open("w", encoding="utf-8")
    command = [sys.executable, "-m", "spnas", "dashboard", "--storage", storage]
    command += ["--artifacts", config.study.artifacts, "--port", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(f"{base}/api/studies/{study._study_id}")
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "dashboard.log"
                ).read_text()
                time.sleep(0.3)
        assert status == 200, body[:500]
        trials = json.loads(body)["trials"]
        listed = [(t["trial_id"], a) for t in trials for a in t["artifacts"]]
        # keep_top_k deleted some weights, and the dashboard lists only the rest.
        assert 0 < len(listed) < len(with_weights)
        for trial_id, artifact in listed:
            url = f"{base}/artifacts/{study._study_id}/{trial_id}/{artifact['artifact_id']}"
            status, data = _get(url)
            assert status == 200, f"{artifact['filename']} of trial id {trial_id}: HTTP {status}"
            assert len(data) > 1000 and artifact["filename"] == "model_final.pth"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
