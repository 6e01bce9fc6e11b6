"""Many worker processes on one search (docs/design.md §4): barriers once, no duplicate candidates,
rounds consistent, and crashed workers' trials retried with the same decision.

Workers are real processes (``multiprocessing`` "forkserver": one clean server process that
imported torch/optuna/spnas once forks each worker, so no database connection or OpenMP pool
of the test process leaks into them). Each runs ``run_worker`` with an
:class:`~spnas.search.Objective` over the :class:`search_doubles.FakeEngine`, and the real
reignition (classification pretraining on the crops of a 12-image synthetic set).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from search_doubles import FakeEngine, config_dict, worker_main

from spnas.search import (
    WEIGHTS_ATTR,
    Decision,
    Objective,
    SearchConfig,
    SearchState,
    create_search_study,
    load_search_study,
    run_worker,
    verification_plan,
)
from spnas.storage import StorageUnreachableError, make_storage

pytestmark = [pytest.mark.slow, pytest.mark.processes]

N_WORKERS = 4
#: Seconds a search may go without any trial starting or ending before it counts as hung; a
#: healthy run takes 20-60 s in all on a loaded 2-core box (round controls and verification
#: included). A search that moves on is given up to SEARCH_TIMEOUT_S × MAX_SLOWDOWN in all:
#: at nice 19 beside full-priority training a sound search took over 150 s (its workers get
#: a few % of the CPU), and a wall-clock limit that fails it says nothing about the product.
SEARCH_TIMEOUT_S = 150
MAX_SLOWDOWN = 5
#: Heartbeats of the fault-tolerance runs: a killed worker's trial is stale after 5 s (3 s
#: works too, but leaves a loaded machine little slack before a live trial looks stale).
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 5}

_PROPOSAL_LOG = re.compile(r"\[(\d+)\] spnas\.search\._sampler INFO: trial \d+: (serial|parallel) ")

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["search_doubles"])


class Workers:
    """Worker processes of one test; all killed at teardown if still alive."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.logs: list[Path] = []

    def start(
        self,
        n: int,
        name: str,
        url: str,
        log_dir: Path,
        engine_kwargs: dict[str, Any],
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        for index in range(n):
            log = log_dir / f"worker-{len(self.procs)}.log"
            proc = _CTX.Process(
                target=worker_main,
                args=(name, url, str(log), engine_kwargs, storage_options),
                name=f"spnas-test-worker-{index}",
            )
            proc.start()
            self.procs.append(proc)
            self.logs.append(log)

    def by_pid(self, pid: int) -> Any:
        for proc in self.procs:
            if proc.pid == pid:
                return proc
        raise AssertionError(f"pid {pid} is not one of this test's workers")

    def alive(self) -> list[Any]:
        return [p for p in self.procs if p.is_alive()]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(timeout=10)

    def log_tails(self, lines: int = 25) -> str:
        """The last ``lines`` of each worker's log, after the live workers wrote their threads'
        stacks to their logs (kept whole in the test's directory: why a worker hangs)."""
        live = self.alive()
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
        if live:
            time.sleep(1.0)
        out = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


@pytest.fixture
def workers():
    group = Workers()
    yield group
    group.kill_all()


def describe(trials: list[FrozenTrial]) -> str:
    rows = []
    for t in trials:
        d = Decision.of(t)
        what = "-" if d is None else f"{d.kind} r{d.round} {d.arch} {d.parallel or ''}"
        retry = t.system_attrs.get("retry_history")
        rows.append(
            f"#{t.number} {t.state.name} {what} value={t.value}"
            + (f" retry_of={retry}" if retry else "")
        )
    return "\n".join(rows)


def retries_of(trials: list[FrozenTrial], number: int) -> list[FrozenTrial]:
    """The retries of trial ``number`` that train it: a second copy queued by another worker
    that failed the same stale trial at once stands down as ``idle``."""
    return [
        t
        for t in trials
        if number in t.system_attrs.get("retry_history", [])
        and getattr(Decision.of(t), "kind", None) != "idle"
    ]


def wait_for_workers(workers: Workers, name: str, url: str, timeout: float) -> None:
    """Poll until every worker exited. Fail, with the study and the worker logs (and their
    stacks, :meth:`Workers.log_tails`), when no trial started or ended for ``timeout``
    seconds, or after ``timeout * MAX_SLOWDOWN`` seconds in all."""
    study, config = load_search_study(name, url)
    started = changed = time.monotonic()
    seen: list[tuple[int, TrialState]] = []
    while workers.alive():
        now = time.monotonic()
        trials = study.get_trials(deepcopy=False)
        _close_connections(study)
        progress = [(t.number, t.state) for t in trials]
        if progress != seen:
            seen, changed = progress, now
        if now - changed > timeout or now - started > timeout * MAX_SLOWDOWN:
            state = SearchState.from_trials(trials, config)
            tails = workers.log_tails()  # before the kill: live workers write their stacks
            workers.kill_all()
            pytest.fail(
                f"search not finished: no trial started or ended for {now - changed:.0f} s "
                f"({now - started:.0f} s in all): {state.phase}, waiting for "
                f"{state.waiting_for}\n{describe(trials)}\n{tails}"
            )
        time.sleep(1.0)
    codes = [p.exitcode for p in workers.procs]
    assert codes, "no workers"


def new_study(
    tmp_path: Path, assets: Path, url: str | None, name: str, **sections: Any
) -> tuple[SearchConfig, str]:
    # One verification repeat: the search tests check that it runs, not its statistics.
    sections.setdefault("verify", {"repeats": 1})
    values = config_dict(tmp_path, name, assets, **sections)
    if url is not None:
        values["study"]["storage"] = url
    config = SearchConfig.from_dict(values)
    url = config.study.storage
    assert url is not None
    _close_connections(create_search_study(config, url))
    return config, url


def _close_connections(study: optuna.Study) -> None:
    """No connection of this process may stay open while workers run (PostgreSQL: no idle
    sessions; SQLite: no lock held)."""
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    if engine is not None:
        engine.dispose()


# --------------------------------------------------------------------------- the checks
def check_search(
    trials: list[FrozenTrial], config: SearchConfig, artifacts: Path | None = None
) -> SearchState:
    """The invariants of a finished search (see the module docstring of the tests)."""
    text = describe(trials)
    state = SearchState.from_trials(trials, config)
    assert state.phase == "done", f"{state.phase}: {state.reason or state.waiting_for}\n{text}"
    assert not [t for t in trials if not t.state.is_finished()], f"unfinished trials\n{text}"

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    decided = [(t, Decision.of(t)) for t in trials if Decision.of(t) is not None]
    live = [(t, d) for t, d in decided if not (t.state == TrialState.FAIL and t.number in retried)]
    kinds = Counter(d.kind for _, d in live)
    assert kinds["seed"] >= 1 and kinds["serial"] >= 2 and kinds["parallel"] >= 1, kinds

    # Barriers: exactly one attempt each (no failure here that was not retried), and complete.
    barriers = [("seed", 0), *((("reignite", r)) for r in range(1, config.serial.n_rounds + 1))]
    barriers.append(("parallel_seed", 0))
    for kind, round_ in barriers:
        attempts = [(t, d) for t, d in live if d.kind == kind and d.round == round_]
        assert len(attempts) == 1, f"{kind} round {round_}: {len(attempts)} attempts\n{text}"
        assert attempts[0][0].state == TrialState.COMPLETE, text
    assert kinds["reignite"] == config.serial.n_rounds, text
    assert kinds["final"] == 0, text

    # Proposals are new: no candidate trained twice, none equal to a barrier's network.
    # A re-evaluation (noise-aware acceptance) is a second training of a would-be winner:
    # at most one completes each, of a candidate that was proposed.
    searched = [(t, d) for t, d in live if d.kind in ("serial", "parallel")]
    proposals = Counter(d.candidate for _, d in searched if not d.repeat)
    twice = [c for c, n in proposals.items() if n > 1]
    assert not twice, f"candidates decided twice: {twice}\n{text}"
    done = TrialState.COMPLETE
    again = Counter(d.candidate for t, d in searched if d.repeat and t.state == done)
    assert all(n == 1 and c in proposals for c, n in again.items()), f"{again}\n{text}"
    for t, d in live:
        if d.kind in ("seed", "parallel_seed"):
            assert d.candidate not in proposals, f"#{t.number} {d.candidate} proposed again"
        if d.kind in ("serial", "parallel"):
            assert d.parent is not None and trials[d.parent].state == TrialState.COMPLETE

    # Replay each round by hand, in finish order, at equal training: every candidate started
    # from the round's baseline, the round's control continued the baseline, and the round
    # ended stuck (or exhausted) against the control and the candidates that beat it.
    by_number = {t.number: t for t in trials}
    baseline = next(t for t, d in live if d.kind == "seed")
    for round_ in range(1, config.serial.n_rounds + 2):
        members = sorted(
            (
                (t, d)
                for t, d in live
                if d.kind in ("serial", "exhausted") and d.round == round_ and d.parallel is None
            ),
            key=lambda td: (td[0].datetime_complete, td[0].number),
        )
        control, reference = _control_of(live, baseline.number, config.search.noise_repeats, text)
        assert all(d.parent == baseline.number for _, d in members if d.kind == "serial"), text
        _check_stuck(members, reference, config.serial.n_stuck, config.direction, text)
        if round_ <= config.serial.n_rounds:
            reignite = next(t for t, d in live if d.kind == "reignite" and d.round == round_)
            # The round's best: its best candidate if that beat the control's mean, else the
            # control (its first repeat stands for it).
            sign = 1.0 if config.direction == "maximize" else -1.0
            values = [(sign * t.value, t) for t, d in members if t.value and not d.repeat]
            top = max(values, key=lambda vt: vt[0], default=None)
            best = top[1] if top is not None and top[0] > sign * reference else control
            assert Decision.of(reignite).parent == best.number, f"round {round_}\n{text}"
            # The reignition started after the round's last trial finished.
            last = max((t.datetime_complete for t, _ in members), default=None)
            assert last is None or reignite.datetime_complete >= last
            baseline = by_number[reignite.number]
    pseed = next(t for t, d in live if d.kind == "parallel_seed")
    members = sorted(
        ((t, d) for t, d in live if d.kind in ("parallel", "exhausted") and d.parallel),
        key=lambda td: (td[0].datetime_complete, td[0].number),
    )
    assert all(d.parent == pseed.number for _, d in members if d.kind == "parallel"), text
    _, reference = _control_of(live, pseed.number, config.search.noise_repeats, text)
    _check_stuck(members, reference, config.parallel.n_stuck, config.direction, text)

    # Verification: every planned network, every repeat, exactly once and complete.
    verified = Counter((d.candidate, d.repeat) for t, d in live if d.kind == "verify")
    assert set(verified.values()) == {1}, f"verification trained twice\n{text}"
    assert all(t.state == TrialState.COMPLETE for t, d in live if d.kind == "verify"), text
    planned = verification_plan(state)
    assert planned[0][0] == "seed", planned
    # An SPNet without subnets is the serial network it came from: verified under that role.
    spnet = state.best_parallel
    assert planned[-1][0] == "spnet" or (spnet is not None and spnet.parallel.total == 0), planned
    expected = {
        ((str(b.arch), None if b.parallel is None else str(b.parallel)), k)
        for _, b in planned
        for k in range(config.verify.repeats)
    }
    assert set(verified) == expected, text

    if artifacts is not None:
        assert state.best_parallel is not None
        artifact = trials[state.best_parallel.number].user_attrs[WEIGHTS_ATTR]
        assert (artifacts / artifact).is_file(), "the best SPNet's weights were deleted"
        # No orphans: every stored file is the weights of some trial (a killed trial uploads
        # nothing; pruned weights are gone from the store).
        referenced = {t.user_attrs.get(WEIGHTS_ATTR) for t in trials} - {None}
        orphans = {p.name for p in artifacts.iterdir()} - referenced
        assert not orphans, f"artifacts no trial refers to: {sorted(orphans)}\n{text}"
    return state


def _control_of(
    live: list[tuple[FrozenTrial, Decision]], baseline: int, repeats: int, text: str
) -> tuple[FrozenTrial, float]:
    """The first control of the round that started from trial ``baseline`` and the round's
    reference, the mean of the control's noise repeats (each trained once and complete)."""
    controls = [(t, d) for t, d in live if d.kind == "control" and d.parent == baseline]
    assert sorted(d.repeat or 0 for _, d in controls) == list(range(repeats)), (
        f"{len(controls)} controls of trial {baseline}\n{text}"
    )
    assert all(t.state == TrialState.COMPLETE for t, _ in controls), text
    first = next(t for t, d in controls if not d.repeat)
    return first, sum(t.value for t, _ in controls) / repeats


def _check_stuck(
    members: list[tuple[FrozenTrial, Decision]],
    baseline: float,
    n_stuck: int,
    direction: str,
    text: str,
) -> None:
    """The round ended stuck (or exhausted). The engine has no noise (σ_trial 0), so the
    noise-aware rule is the greedy one, plus a re-evaluation of every winner, which must
    exist, complete, with the winner's value."""
    again = {d.candidate: t for t, d in members if d.repeat}
    best, stuck, exhausted = baseline, 0, False
    for trial, decision in members:
        if decision.kind == "exhausted":
            exhausted = True
            continue
        if decision.repeat:
            continue
        value = trial.value if trial.state == TrialState.COMPLETE else None
        better = value is not None and (value > best if direction == "maximize" else value < best)
        if better:
            assert again[decision.candidate].value == value, f"trial {trial.number}"
            best, stuck = value, 0
        else:
            stuck += 1
    assert exhausted or stuck >= n_stuck, f"ended with stuck={stuck} < {n_stuck}\n{text}"


# --------------------------------------------------------------------------- concurrency
def run_concurrent(tmp_path: Path, assets: Path, workers: Workers, url: str | None) -> None:
    config, url = new_study(tmp_path, assets, url, "concurrent")
    started = time.monotonic()
    workers.start(N_WORKERS, config.study.name, url, tmp_path, {"sleep": 0.3})
    wait_for_workers(workers, config.study.name, url, SEARCH_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert [p.exitcode for p in workers.procs] == [0] * N_WORKERS, workers.log_tails()
    study, _ = load_search_study(config.study.name, url)
    trials = study.get_trials()
    check_search(trials, config, Path(config.study.artifacts))
    # More than one worker decided proposals: the serial and parallel phases ran in parallel.
    deciders = {
        match[1]
        for log in workers.logs
        for match in _PROPOSAL_LOG.finditer(log.read_text(errors="replace"))
    }
    assert len(deciders) >= 2, workers.log_tails()
    print(f"{len(trials)} trials in {elapsed:.1f} s")


def test_four_workers_sqlite(tmp_path: Path, search_assets: Path, workers: Workers) -> None:
    run_concurrent(tmp_path, search_assets, workers, None)


@pytest.mark.postgres
def test_four_workers_postgres(
    tmp_path: Path, search_assets: Path, workers: Workers, postgresql_server: Any
) -> None:
    url = postgresql_server.new_database("spnas_concurrent")
    run_concurrent(tmp_path, search_assets, workers, url)


# --------------------------------------------------------------------------- fault tolerance
def _kill_when_hung(
    workers: Workers, hang_dir: Path, kind: str, name: str, url: str, timeout: float
) -> int:
    """Wait until a worker hangs in a ``kind`` trial, check it is RUNNING, SIGKILL it.

    Returns the killed trial's number.
    """
    pid_file = hang_dir / f"{kind}.pid"
    deadline = time.monotonic() + timeout
    while not pid_file.exists():
        if time.monotonic() > deadline or not workers.alive():
            pytest.fail(f"no worker reached a {kind} trial\n{workers.log_tails()}")
        time.sleep(0.1)
    pid_text, out_dir = pid_file.read_text().split(maxsplit=1)
    number = int(Path(out_dir).name)
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    trial = study.get_trials(deepcopy=False)[number]
    assert trial.state == TrialState.RUNNING
    assert Decision.of(trial).kind == kind
    proc = workers.by_pid(int(pid_text))
    proc.kill()  # SIGKILL: no cleanup, no final state written
    proc.join(timeout=30)
    assert proc.exitcode == -9
    return number


def run_fault_tolerance(tmp_path: Path, assets: Path, workers: Workers, url: str | None) -> None:
    config, url = new_study(tmp_path, assets, url, "faults")
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    # The first seed, serial and verification trials hang until killed.
    kinds = ("seed", "serial", "verify")
    for kind in kinds:
        (hang_dir / kind).touch()
    engine = {"sleep": 0.3, "hang_dir": str(hang_dir), "hang_seconds": 600.0}
    workers.start(N_WORKERS, config.study.name, url, tmp_path, engine, FAST_HEARTBEAT)
    killed = [
        _kill_when_hung(workers, hang_dir, kind, config.study.name, url, SEARCH_TIMEOUT_S)
        for kind in kinds
    ]
    wait_for_workers(workers, config.study.name, url, SEARCH_TIMEOUT_S)
    survivors = [p for p in workers.procs if p.exitcode != -9]
    assert len(survivors) == N_WORKERS - len(kinds)
    assert all(p.exitcode == 0 for p in survivors), workers.log_tails()

    study, _ = load_search_study(config.study.name, url)
    trials = study.get_trials()
    text = describe(trials)
    for number in killed:
        failed = trials[number]
        assert failed.state == TrialState.FAIL, text
        retries = retries_of(trials, number)
        assert len(retries) == 1, f"trial {number} retried {len(retries)} times\n{text}"
        retry = retries[0]
        assert retry.state.is_finished() and retry.state != TrialState.FAIL, text
        ours = {k: v for k, v in failed.system_attrs.items() if k.startswith("spnas:")}
        theirs = {k: v for k, v in retry.system_attrs.items() if k.startswith("spnas:")}
        assert ours and ours == theirs, "the retry must train the same decision"
    seed_retry = retries_of(trials, killed[0])[0]
    assert seed_retry.state == TrialState.COMPLETE
    check_search(trials, config, Path(config.study.artifacts))


def test_killed_workers_trials_are_retried_sqlite(
    tmp_path: Path, search_assets: Path, workers: Workers
) -> None:
    run_fault_tolerance(tmp_path, search_assets, workers, None)


@pytest.mark.postgres
def test_killed_workers_trials_are_retried_postgres(
    tmp_path: Path, search_assets: Path, workers: Workers, postgresql_server: Any
) -> None:
    url = postgresql_server.new_database("spnas_faults")
    run_fault_tolerance(tmp_path, search_assets, workers, url)


# --------------------------------------------------------------------------- outages and restarts
def _trials_now(name: str, url: str) -> list[FrozenTrial]:
    """The study's trials, read with a connection that is closed again at once."""
    storage = make_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def _wait_for_trials(
    workers: Workers, name: str, url: str, minimum: int, timeout: float
) -> list[FrozenTrial]:
    deadline = time.monotonic() + timeout
    while True:
        trials = _trials_now(name, url)
        if sum(t.state == TrialState.COMPLETE for t in trials) >= minimum:
            return trials
        if time.monotonic() > deadline or not workers.alive():
            pytest.fail(f"fewer than {minimum} trials completed\n{workers.log_tails()}")
        time.sleep(0.3)


@pytest.mark.postgres
def test_workers_wait_through_a_postgres_restart(
    tmp_path: Path, search_assets: Path, workers: Workers, postgresql_server: Any
) -> None:
    url = postgresql_server.new_database("spnas_restart")
    config, url = new_study(tmp_path, search_assets, url, "restart")
    # Heartbeats keep their 1 s interval; the grace outlasts the outage, so that no live
    # trial is failed as stale because its heartbeat waited for the server.
    storage_options = {"heartbeat_interval": 1, "grace_period": 20}
    workers.start(N_WORKERS, config.study.name, url, tmp_path, {"sleep": 0.3}, storage_options)
    before = _wait_for_trials(workers, config.study.name, url, 3, SEARCH_TIMEOUT_S)
    assert SearchState.from_trials(before, config).phase != "done"

    postgresql_server.restart(down_seconds=3.0)  # "fast" stop: every connection is dropped

    wait_for_workers(workers, config.study.name, url, SEARCH_TIMEOUT_S)
    assert [p.exitcode for p in workers.procs] == [0] * N_WORKERS, workers.log_tails()
    study, _ = load_search_study(config.study.name, url)
    trials = study.get_trials()
    check_search(trials, config, Path(config.study.artifacts))
    # Every trial completed before the restart is unchanged after it.
    for old in before:
        if old.state == TrialState.COMPLETE:
            assert trials[old.number].value == old.value
    assert len(trials) > len(before)
    logs = "".join(log.read_text(errors="replace") for log in workers.logs)
    assert "unreachable" in logs or "storage error" in logs, "no worker saw the outage"


def test_a_worker_started_while_the_database_is_down_waits_for_it(
    tmp_path: Path,
    search_assets: Path,
    postgresql_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker meeting a restart while it starts (seen once in CI: it died in
    load_search_study) or starting before its database pauses as it does mid-search."""
    import threading

    import spnas.search._worker as worker

    monkeypatch.setattr(worker, "STORAGE_OUTAGE_WAIT_S", 0.5)
    url = postgresql_server.new_database("spnas_down_at_start")
    config, url = new_study(tmp_path, search_assets, url, "down")
    pid_file = postgresql_server.data_dir / "postmaster.pid"
    restart = threading.Thread(target=postgresql_server.restart, kwargs={"down_seconds": 3.0})
    restart.start()
    try:
        deadline = time.monotonic() + 60
        while pid_file.exists():  # until the server is down
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.05)
        with pytest.raises(StorageUnreachableError):  # what the worker meets at start-up
            make_storage(url)
        engine = FakeEngine(sleep=0.0)
        run_worker(config.study.name, url, objective=Objective(config, engine=engine), max_trials=1)
    finally:
        restart.join()
    assert [kind for kind, _, _ in engine.calls] == ["seed"]
    assert _trials_now(config.study.name, url)[0].state == TrialState.COMPLETE


def test_stopping_every_worker_and_starting_again_resumes(
    tmp_path: Path, search_assets: Path, workers: Workers
) -> None:
    config, url = new_study(tmp_path, search_assets, None, "resume")
    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    (hang_dir / "reignite").touch()  # the reignition barrier hangs until every worker is killed
    engine = {"sleep": 0.3, "hang_dir": str(hang_dir), "hang_seconds": 600.0}
    workers.start(N_WORKERS, config.study.name, url, tmp_path, engine, FAST_HEARTBEAT)
    pid_file = hang_dir / "reignite.pid"
    deadline = time.monotonic() + SEARCH_TIMEOUT_S
    while not pid_file.exists():
        if time.monotonic() > deadline or not workers.alive():
            pytest.fail(f"no worker reached the reignition\n{workers.log_tails()}")
        time.sleep(0.1)
    workers.kill_all()  # SIGKILL, mid-barrier: nothing is written on the way out
    before = _trials_now(config.study.name, url)
    hung = int(Path(pid_file.read_text().split(maxsplit=1)[1]).name)
    assert before[hung].state == TrialState.RUNNING

    workers.start(N_WORKERS, config.study.name, url, tmp_path, {"sleep": 0.3}, FAST_HEARTBEAT)
    wait_for_workers(workers, config.study.name, url, SEARCH_TIMEOUT_S)
    restarted = workers.procs[N_WORKERS:]
    assert [p.exitcode for p in restarted] == [0] * N_WORKERS, workers.log_tails()

    study, _ = load_search_study(config.study.name, url)
    trials = study.get_trials()
    text = describe(trials)
    # Resumed where it was: what had finished stays as it was, and is not run again...
    for old in before:
        if old.state.is_finished():
            assert trials[old.number].state == old.state, text
            assert trials[old.number].value == old.value, text
    # ...the interrupted reignition is retried once, with its decision, and completes...
    retries = retries_of(trials, hung)
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, text
    assert Decision.of(retries[0]) == Decision.of(before[hung]), text
    # ...and every barrier ran once (check_search counts a failed-and-retried trial once).
    check_search(trials, config, Path(config.study.artifacts))
