"""Storage: claims of a trial on SQLite are atomic; passwords never show.

Optuna reads a trial's state, then writes the new one; PostgreSQL locks the row in between,
SQLite does not. Several processes here take the same queued trials at once, and fail the
same running trials at once: each trial must be taken, and failed, exactly once.

Passwords with URL delimiters, written unencoded as people paste them (``Zq@9:Hx/7%mK``) or
percent-encoded, go through every path that shows a storage URL or an error that may quote
it; no piece of three characters or more of the password may appear.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import optuna
import pytest
from optuna.trial import TrialState

from spnas.storage import (
    STORAGE_ENV,
    StorageError,
    _rdb,
    hide_password,
    make_storage,
    redact,
    storage_url_from,
    strip_password,
)
from spnas.storage._rdb import _retry_connections

N_PROCESSES = 4
N_TRIALS = 40


def _claim_all(url: str, trial_ids: list[int], state: TrialState, start: Any, out: Any) -> None:
    storage = make_storage(url)
    start.wait()
    claimed = []
    for trial_id in trial_ids:
        try:
            if storage.set_trial_state_values(trial_id, state):
                claimed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    out.put(claimed)


def _claims(url: str, trial_ids: list[int], state: TrialState) -> list[int]:
    """Every trial id that some process claimed, as often as it was claimed."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(N_PROCESSES), context.Queue()
    procs = [
        context.Process(target=_claim_all, args=(url, trial_ids, state, start, out))
        for _ in range(N_PROCESSES)
    ]
    for proc in procs:
        proc.start()
    claims = [trial_id for _ in procs for trial_id in out.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=60)
    return claims


@pytest.mark.parametrize(
    ("before", "after"),
    [(TrialState.WAITING, TrialState.RUNNING), (TrialState.RUNNING, TrialState.FAIL)],
    ids=["queued-trial-taken", "stale-trial-failed"],
)
def test_a_trial_is_claimed_by_one_process_only(
    tmp_path: Path, before: TrialState, after: TrialState
) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    study = optuna.create_study(study_name="claims", storage=make_storage(url))
    for _ in range(N_TRIALS):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    trial_ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    if before == TrialState.RUNNING:
        for trial_id in trial_ids:
            assert study._storage.set_trial_state_values(trial_id, TrialState.RUNNING)

    claims = _claims(url, trial_ids, after)

    assert sorted(claims) == trial_ids  # each once: none twice, none lost
    states = {t.state for t in optuna.load_study(study_name="claims", storage=url).get_trials()}
    assert states == {after}


def _open(url: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        make_storage(url)
        out.put("opened")
    except StorageError as exc:
        out.put(str(exc))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_processes_opening_a_new_database_at_once_all_open_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Optuna creates a new database's tables when it opens it: of processes opening it at the
    same moment, all but one used to fail ("table studies already exists", a duplicate
    schema version row): SQLite 15 times in 15 tries of 4 processes."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'new.db'}"
    else:
        url = request.getfixturevalue("postgresql_server").new_database("opened_at_once")
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(N_PROCESSES), context.Queue()
    procs = [context.Process(target=_open, args=(url, start, out)) for _ in range(N_PROCESSES)]
    for proc in procs:
        proc.start()
    answers = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert answers == ["opened"] * N_PROCESSES


# --------------------------------------------------------------------------- passwords
#: Passwords as written in a URL: unencoded with URL delimiters, and percent-encoded.
PASSWORDS = {
    "at-colon-slash-percent": "Zq@9:Hx/7%mK",
    "at": "p@ss",
    "colon-at": "a:b@c",
    "slash-bad-escape": "x/y%zz",
    "escapes": "%41%42",
    "hash-question": "Wk#4?rT",
    "hash-question-at": "Zq#7?W@k",
    "encoded-at-colon-slash-percent": quote("Zq@9:Hx/7%mK", safe=""),
    "encoded-colon-at": quote("a:b@c", safe=""),
    "encoded-hash-question": quote("Wk#4?rT", safe=""),
}
password_cases = pytest.mark.parametrize(
    "password", list(PASSWORDS.values()), ids=list(PASSWORDS.keys())
)


def _leaks(text: str, password: str) -> list[str]:
    """Pieces of three characters or more of ``password`` (as written, or decoded) in ``text``:
    every such piece holds a three-character one, so these are all that is checked."""
    forms = {password, unquote(password)}
    return sorted({f[i : i + 3] for f in forms for i in range(len(f) - 2) if f[i : i + 3] in text})


def _closed_port(password: str = "") -> int:
    """A loopback port nothing listens on (a connection is refused at once) whose number holds
    no piece of ``password``: the URL's port is printed, and a random one sometimes did (CI:
    port 40929 and the encoded password's '%409')."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not _leaks(str(port), password):
            return port


class _SleepClock:
    """A stand-in for the ``time`` module whose clock advances only when it sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _url(password: str, port: int = 1, scheme: str = "postgresql+psycopg2") -> str:
    return f"{scheme}://user:{password}@127.0.0.1:{port}/db"


def _readings(url: str) -> list[str]:
    """What SQLAlchemy and urllib make of the parts of ``url``: what a driver's error (host
    name, port, database, ...) may quote when they misread the password."""
    from sqlalchemy.engine import make_url

    found: list[Any] = []
    try:
        parsed = make_url(url)
    except Exception:  # ValueError: a piece of the password read as the port
        pass
    else:
        found += [parsed.username, parsed.password, parsed.host, parsed.port, parsed.database]
    split = urlsplit(url)
    found += [split.netloc, split.username, split.password, split.hostname, split.path]
    found += [split.query, split.fragment]
    with contextlib.suppress(ValueError):  # a piece of the password read as the port
        found.append(split.port)
    # Host and port as text: what a failing int() of the port quotes ("Hx").
    found += split.netloc.rpartition("@")[2].partition(":")[::2]
    return [str(r) for r in found if r]


def _misreadings(url: str, password: str) -> list[str]:
    """The readings of ``url`` that are not what it means (user ``user``, the password, host
    ``127.0.0.1``, its port, database ``db``): pieces of a misread password, of two characters
    or more (``Hx`` as a port, ``ss@127.0.0.1`` as a host), that no error may quote."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    meant = {"user", password, unquote(password), "127.0.0.1", port, "db", "/db"}
    meant.add(f"user:{password}@127.0.0.1:{port}")
    return [r for r in _readings(url) if r not in meant and len(r) >= 2]


def _driver_error(url: str) -> str:
    """An error as a driver would word it, quoting every reading of ``url``, on one line."""
    quoted = ", ".join(f'"{r}"' for r in _readings(url))
    return f"could not connect to server: host name, port or database {quoted} not known"


@password_cases
def test_redact_and_strip_password_keep_no_piece_of_it(password: str) -> None:
    url = _url(password)
    assert redact(url) == "postgresql+psycopg2://user:***@127.0.0.1:1/db"
    for text in (f"storage {url} is down", f"storage {url!r}: down", f"[{url}]"):
        assert not _leaks(redact(text), password), redact(text)
        assert "127.0.0.1:1/db" in redact(text)
    assert strip_password(url) == "postgresql+psycopg2://user@127.0.0.1:1/db"


@password_cases
def test_hide_password_hides_what_parsers_split_off(password: str) -> None:
    url = _url(password)
    message = f"{_driver_error(url)}\nfor {url}"
    hidden = hide_password(message, url)
    assert not _leaks(hidden, password), hidden
    assert "127.0.0.1" in hidden and "could not connect" in hidden


@password_cases
def test_an_unreachable_database_shows_no_piece_of_the_password(password: str) -> None:
    url = _url(password, _closed_port(password))
    with pytest.raises(StorageError) as info:
        make_storage(url, reconnect_timeout=0)
    message = f"{info.value}\n{info.value!r}"
    assert not _leaks(message, password), message
    assert not [r for r in _misreadings(url, password) if r in message], message
    assert "user:***@127.0.0.1" in message


def test_a_password_with_an_at_is_refused_before_connecting(monkeypatch: Any) -> None:
    """SQLAlchemy would end the password at its first '@' and connect to a host "9"."""
    import psycopg2

    def connect(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"connected with {kwargs}")

    monkeypatch.setattr(psycopg2, "connect", connect)
    with pytest.raises(StorageError, match="percent-encoded"):
        make_storage(_url("Zq@9:Hx/7%mK"))


@password_cases
def test_an_unknown_scheme_shows_no_piece_of_the_password(password: str) -> None:
    with pytest.raises(StorageError, match="expected sqlite") as info:
        make_storage(_url(password, scheme="mongodb"))
    assert not _leaks(str(info.value), password), str(info.value)


@password_cases
def test_storage_url_from_gives_the_url_as_written(
    password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url(password)
    file = tmp_path / "storage-url"
    file.write_text(f"{url}\n")
    monkeypatch.setenv(STORAGE_ENV, url)
    assert storage_url_from(file=file) == storage_url_from() == url
    with pytest.raises(StorageError) as info:
        storage_url_from(file=tmp_path / "missing")
    assert not _leaks(str(info.value), password)


@password_cases
def test_the_reconnect_warning_shows_no_piece_of_the_password(
    password: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg2
    import sqlalchemy

    url = _url(password)
    engine = sqlalchemy.create_engine(f"postgresql+psycopg2://user@127.0.0.1:{_closed_port()}/db")

    def connect(*args: Any, **kwargs: Any) -> Any:
        raise psycopg2.OperationalError(_driver_error(url))

    monkeypatch.setattr(psycopg2, "connect", connect)
    # The retry loop's clock moves only by its own sleeps: a slow first attempt on a loaded
    # machine once left no time for the retry, and so no warning to check.
    monkeypatch.setattr(_rdb, "time", _SleepClock())
    _retry_connections(engine, url, timeout=0.6)  # one retry after 0.5 s, then the error
    with (
        caplog.at_level(logging.WARNING, logger="spnas.storage"),
        pytest.raises(sqlalchemy.exc.OperationalError),
    ):
        engine.connect()
    assert "unreachable" in caplog.text and "127.0.0.1" in caplog.text
    assert not _leaks(caplog.text, password), caplog.text


@password_cases
def test_the_storage_proxy_shows_no_piece_of_the_password(password: str) -> None:
    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    from spnas.storage import parse_grpc_url, serve_proxy

    for url in (_url(password, _closed_port(password)), _url(password, 13000, "grpc")):
        with pytest.raises(StorageError) as info:
            serve_proxy(url, port=_closed_port(password), threads=1)
        assert not _leaks(str(info.value), password), str(info.value)
    with pytest.raises(StorageError) as info:
        parse_grpc_url(_url(password, 13000, "grpc"))
    assert not _leaks(str(info.value), password), str(info.value)


#: The commands that open a storage, with their other required arguments.
COMMANDS = {
    "status": ["status", "--study", "s"],
    "resume": ["resume", "--study", "s"],
    "worker": ["worker", "--study", "s"],
    "verify": ["verify", "--study", "s"],
    "gc": ["gc", "--study", "s"],
    "export": ["export", "--study", "s", "--out", "{tmp}"],
    "report": ["report", "--study", "s", "--out", "{tmp}"],
    "dashboard": ["dashboard", "--port", "1"],
    "storage-proxy": ["storage-proxy", "--port", "1"],
}


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from spnas.cli import main

    handler = signal.getsignal(signal.SIGTERM)  # `spnas worker` sets its own
    try:
        code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@password_cases
@pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS.keys()))
def test_commands_on_an_unreachable_database_show_no_piece_of_the_password(
    password: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `spnas worker` waits out every outage before its error (10 pauses of 2 s): what the
    # pauses log is checked here, not how long they last.
    monkeypatch.setattr("spnas.search._worker.STORAGE_OUTAGE_WAIT_S", 0.0)
    url = _url(password, _closed_port(password))
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in command]
    code, output = _run_cli([*argv, "--storage", url], capsys)
    output += caplog.text
    assert code == 2 and "error:" in output, output
    assert not _leaks(output, password), output
    assert not [r for r in _misreadings(url, password) if r in output], output
    assert "user:***@127.0.0.1" in output
    if command[0] == "worker" and "ambiguous" not in output:  # a URL refused unopened
        assert "going on in 0 s" in output, output  # the pauses' own lines were checked too


@password_cases
@pytest.mark.parametrize("source", ["--storage-file", STORAGE_ENV])
def test_a_url_from_a_file_or_the_environment_shows_no_piece_of_the_password(
    password: str,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = _url(password, _closed_port(password))
    argv = ["status", "--study", "s"]
    if source == STORAGE_ENV:
        monkeypatch.setenv(STORAGE_ENV, url)
    else:
        (tmp_path / "url").write_text(url)
        argv += ["--storage-file", str(tmp_path / "url")]
    code, output = _run_cli(argv, capsys)
    output += caplog.text
    assert code == 2 and "user:***@127.0.0.1" in output, output
    assert not _leaks(output, password), output
    assert not [r for r in _misreadings(url, password) if r in output], output
