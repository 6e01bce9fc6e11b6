"""Preemption, pauses and faults with real processes and real signals.

- SIGTERM to ``spnas search`` reaches its workers: each fails its running trial and queues its
  retry, every process exits 143 (128 + SIGTERM: "stopped, run me again" to a scheduler such
  as a Kubernetes Indexed Job), none is left behind, and a worker started again takes the
  interrupted trial at once (no 600 s heartbeat grace). ``spnas worker`` alone exits 143 too.
- During a PostgreSQL search whose URL holds a password, the password is in no command line
  (``ps``), log or printed output.
- A worker paused (SIGSTOP) past the heartbeat grace, whose trial was failed as stale and
  retried elsewhere, discards its result when it wakes (SIGCONT) and goes on.
- A search that failed because its artifact store broke (a barrier failed every attempt)
  resumes when workers start again after the store is repaired; completed trials are kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from search_doubles import FakeEngine, config_dict, make_config
from test_search_workers import (
    FAST_HEARTBEAT,
    SEARCH_TIMEOUT_S,
    Workers,
    check_search,
    describe,
    new_study,
    retries_of,
    wait_for_workers,
)

from spnas.search import (
    Decision,
    Objective,
    SearchConfig,
    SearchState,
    create_search_study,
    load_search_study,
    run_worker,
)
from spnas.storage import STORAGE_ENV, make_storage

pytestmark = [pytest.mark.slow, pytest.mark.processes]

PASSWORD = "p@ss:w/rd%?#"
#: How long ``spnas search`` may take to stop after SIGTERM (workers re-queue and exit).
STOP_TIMEOUT_S = 60


@pytest.fixture
def group() -> Any:
    """Worker processes of a test (``test_search_workers.Workers``), killed at teardown."""
    workers = Workers()
    yield workers
    workers.kill_all()


def trials_of(name: str, url: str) -> list[FrozenTrial]:
    """The study's trials (none while it does not exist yet), over a connection closed after."""
    storage = make_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:
        return []
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_search(
    tmp_path: Path, values: dict[str, Any], env: dict[str, str], count: int = 2
) -> tuple[subprocess.Popen, Path]:
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(values))
    log = tmp_path / "search.log"
    command = [sys.executable, "-m", "spnas", "search", str(study), "--workers", str(count)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--threads", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to the test's group must not reach it
        )
    return proc, log


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``spnas search`` and its workers (its process group: ``start_search``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def searches() -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    """:func:`start_search`; what a test leaves running is killed at teardown, workers
    included: a failed test once left its search training beside the tests after it."""
    started: list[subprocess.Popen] = []

    def start(*args: Any, **kwargs: Any) -> tuple[subprocess.Popen, Path]:
        proc, log = start_search(*args, **kwargs)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        kill_group(proc)


def wait_until(predicate: Any, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            pytest.fail(f"{what} did not happen:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def running_decided(name: str, url: str, kind: str) -> FrozenTrial | None:
    for trial in trials_of(name, url):
        decision = Decision.of(trial)
        if trial.state == TrialState.RUNNING and decision and decision.kind == kind:
            return trial
    return None


def stop(proc: subprocess.Popen, log: Path) -> list[int]:
    """SIGTERM ``spnas search``; returns its workers' pids (all checked gone)."""
    pids = children(proc.pid)
    assert pids, "spnas search has no workers"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Why it hangs: every live worker writes its threads' stacks to its log (SIGUSR1,
        # spnas worker's faulthandler), kept in the test's directory.
        for pid in [pid for pid in pids if alive(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(2.0)
        kill_group(proc)
        tails = "\n".join(
            f"--- {path.name}\n{path.read_text()[-6000:]}"
            for path in sorted(log.parent.glob("work/logs/*.log"))
        )
        pytest.fail(f"spnas search still running {STOP_TIMEOUT_S} s after SIGTERM\n{tails}")
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers left running after SIGTERM: {left}\n{log.read_text()[-3000:]}"
    assert proc.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    return pids


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_to_a_worker_before_the_search_is_done_exits_143(
    tmp_path: Path, search_assets: Path
) -> None:
    """A Kubernetes Indexed Job counts an index whose pod exited 0 as succeeded and never
    replaces it: a preempted worker exits 128 + SIGTERM, its trial queued for a retry."""
    values = config_dict(tmp_path, "pod", search_assets, schedule={"iters": 60})
    url = values["study"]["storage"]
    create_search_study(SearchConfig.from_dict(values))
    env = dict(os.environ, OMP_NUM_THREADS="1", **{STORAGE_ENV: url})
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spnas", "worker", "--study", "pod", "--threads", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        seed = wait_until(
            lambda: running_decided("pod", url, "seed"), "a running seed trial", proc, log, 180
        )
        # SIGUSR1: every thread's stack to the log (a worker that seems stuck); it goes on.
        proc.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: "(most recent call first)" in log.read_text(), "a stack dump", proc, log, 30
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    trials = trials_of("pod", url)
    assert trials[seed.number].state == TrialState.FAIL, describe(trials)
    assert [t.state for t in retries_of(trials, seed.number)] == [TrialState.WAITING]


def test_sigterm_to_search_requeues_the_trial_and_leaves_no_process(
    tmp_path: Path, search_assets: Path, searches: Callable[..., tuple[subprocess.Popen, Path]]
) -> None:
    # Trials long enough (60 iterations: ~30 s on a loaded 2-core machine) to be interrupted.
    values = config_dict(tmp_path, "preempted", search_assets, schedule={"iters": 60})
    url = values["study"]["storage"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, log = searches(tmp_path, values, env)
    seed = wait_until(
        lambda: running_decided("preempted", url, "seed"), "a running seed trial", proc, log, 180
    )
    stop(proc, log)

    trials = trials_of("preempted", url)
    text = describe(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING], text
    assert trials[seed.number].state == TrialState.FAIL, text
    retries = [t for t in trials if seed.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING, text
    assert Decision.of(retries[0]) == Decision.of(seed), text
    logs = "".join(p.read_text() for p in (tmp_path / "work" / "logs").glob("*.log"))
    assert "stopped by SIGTERM" in logs, logs[-3000:]

    # A worker started again (default heartbeats: a 600 s grace) trains the retry first.
    started = time.monotonic()
    worker = subprocess.run(
        [sys.executable, "-m", "spnas", "worker", "--study", "preempted", "--max-trials", "1"],
        env=dict(env, **{STORAGE_ENV: url}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert time.monotonic() - started < 300
    trials = trials_of("preempted", url)
    assert trials[retries[0].number].state == TrialState.COMPLETE, describe(trials)


@pytest.mark.postgres
def test_no_password_in_ps_or_logs_during_a_postgres_search(
    tmp_path: Path,
    search_assets: Path,
    postgresql_server: Any,
    searches: Callable[..., tuple[subprocess.Popen, Path]],
) -> None:
    plain = postgresql_server.new_database("spnas_ps")
    head, rest = plain.split("://", 1)
    user, host = rest.split("@", 1)
    url = f"{head}://{user}:{quote(PASSWORD, safe='')}@{host}"  # trust auth accepts any
    values = config_dict(tmp_path, "hidden", search_assets)
    values["study"].pop("storage")
    env = dict(os.environ, OMP_NUM_THREADS="1", **{STORAGE_ENV: url})
    proc, log = searches(tmp_path, values, env)
    secrets = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD))
    seen = 0

    def completed_and_ps_clean() -> bool:
        nonlocal seen
        listing = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True)
        assert not [s for s in secrets if s in listing.stdout], "password visible in ps"
        seen += 1
        trials = trials_of("hidden", url)
        return sum(t.state == TrialState.COMPLETE for t in trials) >= 3

    wait_until(completed_and_ps_clean, "3 completed trials", proc, log, 240)
    assert seen >= 2 and len(children(proc.pid)) == 2
    stop(proc, log)
    outputs = [log, *sorted((tmp_path / "work" / "logs").glob("*.log"))]
    assert len(outputs) == 3
    for path in outputs:
        text = path.read_text()
        assert not [s for s in secrets if s in text], f"password in {path.name}"
    assert "postgres" in log.read_text()  # the URL is printed, redacted


# --------------------------------------------------------------------------- pauses
def test_a_worker_paused_past_the_grace_period_rejoins(
    tmp_path: Path, search_assets: Path, group: Workers
) -> None:
    config, url = new_study(tmp_path, search_assets, None, "paused")
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    (hang_dir / "serial").touch()
    hang = 8.0
    engine = {"sleep": 0.3, "hang_dir": str(hang_dir), "hang_seconds": hang}
    group.start(3, config.study.name, url, tmp_path, engine, FAST_HEARTBEAT)
    pid_file = hang_dir / "serial.pid"
    deadline = time.monotonic() + SEARCH_TIMEOUT_S
    while not pid_file.exists():
        assert time.monotonic() < deadline, group.log_tails()
        time.sleep(0.1)
    claimed = time.monotonic()
    pid_text, out_dir = pid_file.read_text().split(maxsplit=1)
    number = int(Path(out_dir).name)
    paused = group.by_pid(int(pid_text))
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        # The other workers fail the silent trial as stale (grace 5 s) and queue its retry.
        while trials_of("paused", url)[number].state != TrialState.FAIL:
            assert time.monotonic() - claimed < 60, group.log_tails()
            time.sleep(0.3)
        time.sleep(max(0.0, hang + 1 - (time.monotonic() - claimed)))
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    wait_for_workers(group, config.study.name, url, SEARCH_TIMEOUT_S)
    assert [p.exitcode for p in group.procs] == [0, 0, 0], group.log_tails()
    log = group.logs[group.procs.index(paused)].read_text()
    assert f"trial {number} was declared stale" in log, log[-3000:]
    study, _ = load_search_study(config.study.name, url)
    trials = study.get_trials()
    assert trials[number].state == TrialState.FAIL
    # The paused worker uploaded nothing: check_search finds no orphan artifact.
    check_search(trials, config, Path(config.study.artifacts))


# --------------------------------------------------------------------------- failed → resumed
def test_a_search_failed_by_a_broken_artifact_store_resumes_after_repair(
    tmp_path: Path, search_assets: Path, group: Workers
) -> None:
    config, url = new_study(
        tmp_path,
        search_assets,
        None,
        "broken",
        search={"max_barrier_attempts": 2, "barrier_backoff_seconds": 0.5},
    )
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    (hang_dir / "reignite").touch()
    engine = {"sleep": 0.2, "hang_dir": str(hang_dir), "hang_seconds": 3.0}
    group.start(2, config.study.name, url, tmp_path, engine)
    pid_file = hang_dir / "reignite.pid"
    deadline = time.monotonic() + SEARCH_TIMEOUT_S
    while not pid_file.exists():
        assert time.monotonic() < deadline and group.alive(), group.log_tails()
        time.sleep(0.1)
    # The reignition trains while its artifact store goes away (a file system unmounted,
    # a full disk): its upload fails, and so does every later attempt.
    artifacts = Path(config.study.artifacts)
    shutil.move(artifacts, tmp_path / "artifacts-away")
    artifacts.write_text("not a directory")
    wait_for_workers(group, config.study.name, url, SEARCH_TIMEOUT_S)
    before = trials_of("broken", url)
    state = SearchState.from_trials(before, config)
    assert state.phase == "failed", describe(before)

    artifacts.unlink()
    shutil.move(tmp_path / "artifacts-away", artifacts)
    group.start(2, config.study.name, url, tmp_path, {"sleep": 0.2})
    wait_for_workers(group, config.study.name, url, SEARCH_TIMEOUT_S)
    assert [p.exitcode for p in group.procs[2:]] == [0, 0], group.log_tails()
    trials = trials_of("broken", url)
    text = describe(trials)
    for old in before:
        if old.state == TrialState.COMPLETE:
            assert trials[old.number].state == TrialState.COMPLETE, text
            assert trials[old.number].value == old.value, text
    check_search(trials, config, Path(config.study.artifacts))


def test_a_result_lost_to_a_database_restart_is_a_storage_error() -> None:
    """When the write of a trial's result fails (the server restarts), Optuna raises its own
    ``AssertionError("Should not reach.")`` while handling the storage error (seen in CI);
    the worker must see the storage error behind it, and pause instead of dying."""
    from spnas.search._worker import _storage_cause

    lost = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    with pytest.raises(AssertionError) as raised:
        try:
            raise lost
        finally:
            raise AssertionError("Should not reach.")
    assert _storage_cause(raised.value) is lost
    assert _storage_cause(ValueError("the objective's own error")) is None


class _OutageOnce:
    """An objective whose first reignition meets a database restart mid-trial (a query in
    flight when the server went away), as in CI's PostgreSQL restart test."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.lost: int | None = None

    def __call__(self, trial: optuna.Trial) -> Any:
        decision = Decision.of(trial.study._storage.get_trial(trial._trial_id))
        if self.lost is None and decision is not None and decision.kind == "reignite":
            self.lost = trial.number
            import sqlalchemy.exc

            raise sqlalchemy.exc.OperationalError(
                "UPDATE trials", {}, Exception("server closed the connection unexpectedly")
            )
        return self.objective(trial)


def test_a_trial_ended_by_a_storage_error_is_retried_with_its_decision(
    tmp_path: Path, search_assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure is the database's, not the network's: the trial is retried with its
    decision, instead of counting as a failed attempt that makes the sampler decide again."""
    import spnas.search._worker as worker

    monkeypatch.setattr(worker, "STORAGE_OUTAGE_WAIT_S", 0.0)
    config = make_config(tmp_path, "outage", search_assets)
    create_search_study(config)
    objective = _OutageOnce(Objective(config, engine=FakeEngine(sleep=0.0)))
    state = run_worker(config.study.name, config.study.storage, objective=objective)
    assert state.phase == "done"
    study, _ = load_search_study(config.study.name, config.study.storage)
    trials = study.get_trials()
    text = describe(trials)
    assert objective.lost is not None
    assert trials[objective.lost].state == TrialState.FAIL, text
    retries = retries_of(trials, objective.lost)
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, text
    assert Decision.of(retries[0]) == Decision.of(trials[objective.lost]), text
    check_search(trials, config, Path(config.study.artifacts))


def test_a_signal_during_start_up_is_not_lost_in_a_finalizer(
    tmp_path: Path, search_assets: Path
) -> None:
    """SIGTERM while a worker starts raises KeyboardInterrupt, which Python drops when it lands
    in a finalizer ("Exception ignored in WeakKeyDictionary…"): the worker then ran the whole
    search, and `spnas search` waited for it (CI). The start-up handler remembers the signal,
    and the worker loop stops at its first turn, before asking for a trial."""
    from spnas.search import stop_before_joining

    config = make_config(tmp_path, "startup", search_assets)
    create_search_study(config)
    with pytest.raises(KeyboardInterrupt):
        stop_before_joining(signal.SIGTERM, None)  # the exception "lost": caught here
    engine = FakeEngine(sleep=0.0)
    state = run_worker("startup", config.study.storage, objective=Objective(config, engine=engine))
    assert engine.calls == [] and state.phase == "seed"
    assert optuna.load_study(study_name="startup", storage=config.study.storage).trials == []
    # The signal is forgotten once the worker stopped: the next worker starts afresh.
    engine = FakeEngine(sleep=0.0)
    run_worker(
        "startup", config.study.storage, objective=Objective(config, engine=engine), max_trials=1
    )
    assert [kind for kind, _, _ in engine.calls] == ["seed"]


@pytest.mark.parametrize("moment", ["creating the trial", "after deciding"])
def test_a_signal_while_optuna_hands_a_trial_over_fails_it(
    tmp_path: Path, search_assets: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """SIGTERM between Optuna's making a trial and the sampler or objective having it (seen in
    CI: an undecided trial left RUNNING after `spnas search` was stopped, holding every later
    trial in line until the heartbeat grace period). The signal waits for the trial to be
    known: an undecided trial is failed, a decided one failed and queued for a retry."""
    from spnas.search import SPNASSampler
    from spnas.storage._rdb import _SQLiteStorage

    def signalling(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between two bytecodes of this thread
                time.sleep(0.001)
            return result

        return call

    if moment == "creating the trial":  # (Optuna's cached storage calls the private one)
        monkeypatch.setattr(
            _SQLiteStorage, "_create_new_trial", signalling(_SQLiteStorage._create_new_trial)
        )
    else:
        monkeypatch.setattr(SPNASSampler, "before_trial", signalling(SPNASSampler.before_trial))
    config = make_config(tmp_path, "handover", search_assets)
    create_search_study(config)
    engine = FakeEngine(sleep=0.0)
    state = run_worker("handover", config.study.storage, objective=Objective(config, engine=engine))
    assert state.phase == "seed" and engine.calls == []
    trials = optuna.load_study(study_name="handover", storage=config.study.storage).trials
    text = describe(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING], text
    assert trials[0].state == TrialState.FAIL, text
    if moment == "creating the trial":
        assert len(trials) == 1 and Decision.of(trials[0]) is None, text
    else:
        retries = retries_of(trials, 0)
        assert [t.state for t in retries] == [TrialState.WAITING], text
        assert Decision.of(retries[0]) == Decision.of(trials[0]), text
