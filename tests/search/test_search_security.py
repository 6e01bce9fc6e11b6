"""Credentials, names, checksums, atomic writes, barrier back-off and workdir hygiene.

The processes of a real search (preemption, pauses, a failed search resumed, ``ps`` during a
PostgreSQL search) are in ``test_search_preemption.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import pytest
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from search_doubles import FakeEngine, config_dict, frozen, make_config

from spnas._io import sha256_file
from spnas.exceptions import ConfigError, WeightsError
from spnas.search import (
    CONFIG_ATTR,
    WEIGHTS_ATTR,
    WEIGHTS_SHA256_ATTR,
    Decision,
    Objective,
    SearchConfig,
    SearchState,
    create_search_study,
    fetch_weights,
    load_search_study,
    run_worker,
)
from spnas.storage import (
    STORAGE_ENV,
    StorageError,
    hide_password,
    make_artifact_store,
    redact,
    storage_url_from,
    strip_password,
)

#: A password with every character that has a meaning in a URL.
PASSWORD = "p@ss:w/rd%?#"
ENCODED = quote(PASSWORD, safe="")


def leaks(text: str) -> list[str]:
    """Pieces (4 characters or more) of the password, raw or URL-encoded, found in ``text``."""
    found = []
    for secret in (PASSWORD, ENCODED):
        for size in range(4, len(secret) + 1):
            for start in range(len(secret) - size + 1):
                piece = secret[start : start + size]
                if piece in text:
                    found.append(piece)
    return found


def pg_url(url: str) -> str:
    """``url`` (trust authentication: any password is accepted) with :data:`PASSWORD`."""
    head, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{head}://{user}:{ENCODED}@{host}"


# --------------------------------------------------------------------------- credentials
def test_redaction_hides_a_password_with_any_characters() -> None:
    url = f"postgresql+psycopg2://spnas:{ENCODED}@db.example:5432/spnas"
    assert redact(url) == "postgresql+psycopg2://spnas:***@db.example:5432/spnas"
    assert strip_password(url) == "postgresql+psycopg2://spnas@db.example:5432/spnas"
    message = f'connecting to {url} failed: password "{PASSWORD}" rejected for {url}'
    hidden = hide_password(message, url)
    assert not leaks(hidden), hidden
    assert "db.example" in hidden and "rejected" in hidden
    # A URL written with the raw password (not encoded, as people do) in free text.
    raw = f"storage postgresql://spnas:{PASSWORD}@db.example/spnas is down"
    assert not leaks(redact(raw)), redact(raw)
    assert strip_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_storage_url_comes_from_option_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    with pytest.raises(Exception, match="SPNAS_STORAGE"):
        storage_url_from()
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert storage_url_from() == "sqlite:///env.db"
    file = tmp_path / "url"
    file.write_text("sqlite:///file.db\n")
    assert storage_url_from(file=file) == "sqlite:///file.db"
    assert storage_url_from("sqlite:///arg.db", file) == "sqlite:///arg.db"


@pytest.mark.postgres
def test_no_password_in_the_study_optuna_studies_or_the_dashboard(
    tmp_path: Path, search_assets: Path, postgresql_server: Any
) -> None:
    url = pg_url(postgresql_server.new_database("spnas_secret"))
    values = config_dict(tmp_path, "secret", search_assets)
    values["study"]["storage"] = url  # as a study YAML would name it
    config = SearchConfig.from_dict(values)
    create_search_study(config, url)
    study, loaded = load_search_study("secret", url)
    assert loaded.study.storage == url  # workers get the full URL back
    stored = json.dumps(study.user_attrs[CONFIG_ATTR])
    assert not leaks(stored), stored
    assert strip_password(url) in stored
    # Creating it again (a worker node re-running spnas search) is still idempotent.
    create_search_study(config, url)

    optuna_cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(optuna_cli), "studies", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "secret" in listed.stdout
    assert not leaks(listed.stdout + listed.stderr), listed.stdout

    port = _free_port()
    env = dict(os.environ, **{STORAGE_ENV: url})
    log = tmp_path / "dashboard.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "spnas", "dashboard", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        summaries = _get(f"{base}/api/studies", server, log)
        study_id = next(s["study_id"] for s in json.loads(summaries)["study_summaries"])
        detail = _get(f"{base}/api/studies/{study_id}?after=0", server, log)
        assert "spnas:config" in summaries + detail
        assert not leaks(summaries + detail)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not leaks(log.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dashboard did not answer {url}:\n{log.read_text()}")
            time.sleep(0.3)


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "a..b", "x y", ""])
def test_study_names_that_are_not_plain_directory_names_are_refused(
    tmp_path: Path, name: str
) -> None:
    values = config_dict(tmp_path, "x")
    values["study"] = {"name": name}
    with pytest.raises(ConfigError, match=r"study\.name"):
        SearchConfig.from_dict(values)


def test_search_with_a_dotdot_name_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.cli import main

    cwd = tmp_path / "project"
    cwd.mkdir()
    study = cwd / "study.yaml"
    study.write_text("study:\n  name: ../../outside\n")
    before = set(tmp_path.rglob("*"))
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(["search", str(study)])
    finally:
        os.chdir(previous)
    assert code == 2 and "study.name" in capsys.readouterr().err
    assert set(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- checksums
class _FlakyStore:
    """Serves a truncated copy of every artifact the first ``bad`` times it is read."""

    def __init__(self, store: Any, bad: int) -> None:
        self.store = store
        self.bad = bad

    def open_reader(self, artifact_id: str) -> Any:
        with self.store.open_reader(artifact_id) as reader:
            body = reader.read()
        if self.bad > 0:
            self.bad -= 1
            body = body[: len(body) // 2]
        return io.BytesIO(body)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(artifact_id)


def _trial_with_weights(tmp_path: Path) -> tuple[optuna.Study, Any, bytes]:
    store = make_artifact_store(tmp_path / "artifacts")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    body = os.urandom(4096)
    weights = tmp_path / "model.pth"
    weights.write_bytes(body)
    artifact = upload_artifact(artifact_store=store, file_path=str(weights), study_or_trial=study)
    attrs = {WEIGHTS_ATTR: artifact, WEIGHTS_SHA256_ATTR: sha256_file(weights)}
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs=attrs))
    return study, store, body


def test_a_partial_download_is_fetched_again(tmp_path: Path) -> None:
    study, store, body = _trial_with_weights(tmp_path)
    target = tmp_path / "work" / "parent.pth"
    fetch_weights(study, 0, _FlakyStore(store, bad=1), target)
    assert target.read_bytes() == body


def test_a_truncated_artifact_is_never_used(tmp_path: Path) -> None:
    study, store, _ = _trial_with_weights(tmp_path)
    target = tmp_path / "work" / "parent.pth"
    with pytest.raises(WeightsError, match="SHA-256"):
        fetch_weights(study, 0, _FlakyStore(store, bad=2), target)
    assert list((tmp_path / "work").iterdir()) == []  # no partial file left to pick up


def test_upload_errors_name_the_artifact_store(tmp_path: Path, search_assets: Path) -> None:
    config = make_config(tmp_path, "upload", search_assets)
    objective = Objective(config, engine=FakeEngine())
    artifacts = Path(config.study.artifacts)
    shutil.rmtree(artifacts)
    artifacts.write_text("a file where the store should be (unmounted, replaced)")
    study = optuna.create_study()
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"weights")
    with pytest.raises(StorageError, match=re.escape(str(artifacts))):
        objective.upload(study.ask(), weights)


# --------------------------------------------------------------------------- back-off
def test_failed_barrier_attempts_back_off(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, search={"barrier_backoff_seconds": 30.0, "max_barrier_attempts": 3}
    )
    seed = Decision("seed", arch=config.seed_arch)
    now = (datetime.now() - datetime(2024, 1, 1)).total_seconds()
    # One failure 10 s ago: wait 20 s more; one 40 s ago: go.
    state = SearchState.from_trials([frozen(0, seed, TrialState.FAIL, finished=now - 10)], config)
    assert state.next_kind is None and "before attempt 2 of 3" in state.waiting_for
    state = SearchState.from_trials([frozen(0, seed, TrialState.FAIL, finished=now - 40)], config)
    assert state.next_kind == "seed"
    # The wait doubles: the second failure, 40 s ago, still waits (60 s).
    trials = [
        frozen(0, seed, TrialState.FAIL, finished=now - 100),
        frozen(1, seed, TrialState.FAIL, finished=now - 40),
    ]
    assert SearchState.from_trials(trials, config).next_kind is None
    trials[1] = frozen(1, seed, TrialState.FAIL, finished=now - 70)
    assert SearchState.from_trials(trials, config).next_kind == "seed"


# --------------------------------------------------------------------------- hygiene
class _FailingEngine(FakeEngine):
    """Fails every serial trial after its parent's weights were fetched."""

    def train_eval(self, spec: Any, init_weights: Any, *args: Any, **kwargs: Any) -> Any:
        if init_weights is not None and init_weights.path.name == "parent.pth":
            raise RuntimeError("injected failure")
        return super().train_eval(spec, init_weights, *args, **kwargs)


def test_failed_trials_leave_no_weights_in_the_workdir(tmp_path: Path, search_assets: Path) -> None:
    config = make_config(tmp_path, "hygiene", search_assets)
    create_search_study(config)
    objective = Objective(config, engine=_FailingEngine(sleep=0.0))
    run_worker(config.study.name, config.study.storage, objective=objective, max_trials=3)
    study, _ = load_search_study(config.study.name, config.study.storage)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) >= 2, states
    trials_dir = Path(config.study.workdir) / "trials"
    assert len(list(trials_dir.iterdir())) == 3
    left = sorted(str(p.relative_to(trials_dir)) for p in trials_dir.rglob("*.pth"))
    assert not left, f"weights left behind: {left}"
