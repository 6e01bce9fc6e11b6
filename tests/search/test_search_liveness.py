"""Liveness without Optuna heartbeats (:mod:`spnas.search._liveness`).

- The rule: a running trial is dead once its beat counter stood still for the grace period on
  the watcher's own clock (a fake clock here), whatever the clocks of other nodes say.
- End to end: three workers behind ``spnas storage-proxy`` (which records no heartbeats); the
  one running the seed (the lowest-numbered trial, a barrier every other trial waits for) is
  SIGKILLed; the others fail it once its beat stops, retry it with its decision, and finish.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from search_doubles import make_config, write_decision
from test_search_workers import (
    SEARCH_TIMEOUT_S,
    Workers,
    check_search,
    describe,
    new_study,
    retries_of,
    wait_for_workers,
)

from spnas.exceptions import ConfigError
from spnas.search import Decision, load_search_study
from spnas.search._liveness import BEAT_ATTR, BeatWatch, needs_beats
from spnas.search._signals import requeue_interrupted
from spnas.storage import make_storage

pytestmark = pytest.mark.processes

#: The beats of the end-to-end search: a killed worker's trial is dead 4 s after its last beat.
FAST_BEATS = {"beat_seconds": 0.5, "beat_grace_seconds": 4.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def test_a_trial_is_dead_once_its_beat_stands_still_for_the_grace_period() -> None:
    study = optuna.create_study()
    storage = study._storage
    alive, dead, mine = (study.ask() for _ in range(3))
    clock = Clock()
    watch = BeatWatch(grace=10.0, clock=clock)
    for step in range(1, 5):  # `alive` beats every 4 s; `dead` beat once, then never again
        storage.set_trial_system_attr(alive._trial_id, BEAT_ATTR, step)
        if step == 1:
            storage.set_trial_system_attr(dead._trial_id, BEAT_ATTR, 7)
        found = watch.dead(_running(study), exclude=mine._trial_id)
        assert found == ([dead._trial_id] if clock.now - 1000.0 >= 10.0 else []), clock.now
        clock.now += 4.0
    # The watcher's own trial never counts, however long it stood still.
    assert mine._trial_id not in watch.dead(_running(study), exclude=mine._trial_id)
    # A trial never seen beating is timed from when this watcher first saw it.
    late = study.ask()
    assert late._trial_id not in watch.dead(_running(study))
    clock.now += 9.9
    assert late._trial_id not in watch.dead(_running(study))
    clock.now += 0.1
    assert late._trial_id in watch.dead(_running(study))


def test_a_watcher_reading_a_few_trials_keeps_timing_the_others() -> None:
    """A waiting worker reads only what it waits on (the head of its line, a few watched
    trials): a trial left out of some reads is timed across the reads that hold it."""
    study = optuna.create_study()
    storage = study._storage
    beating, silent, rare = (study.ask() for _ in range(3))
    clock = Clock()
    watch = BeatWatch(grace=10.0, clock=clock)
    assert watch.dead(_running(study)) == []
    for step in range(1, 5):  # only `beating` is read for 8 s, and beats
        clock.now += 2.0
        storage.set_trial_system_attr(beating._trial_id, BEAT_ATTR, step)
        assert watch.dead([storage.get_trial(beating._trial_id)]) == []
    clock.now += 2.0  # `silent` was read 10 s ago and has not beaten since: dead
    assert watch.dead([storage.get_trial(silent._trial_id)]) == [silent._trial_id]
    # Not read for a grace period: timed afresh (this watcher cannot say since when).
    clock.now += 20.0
    assert watch.dead([storage.get_trial(rare._trial_id)]) == []
    clock.now += 9.9
    assert watch.dead([storage.get_trial(rare._trial_id)]) == []
    clock.now += 0.1
    assert watch.dead([storage.get_trial(rare._trial_id)]) == [rare._trial_id]
    # A trial read finished is forgotten, and never reported.
    study.tell(rare, 1.0)
    assert watch.dead(study.get_trials(deepcopy=False)) == []


def test_a_waiting_trial_beats_once_a_period_and_reads_nothing_to_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keep_alive`` at every look (0.2 s apart) beats once per half ``beat_seconds``, reads
    no trial of its own, and fails the dead trials among those the caller read, alone."""
    import spnas.search._waiting as waiting_module

    config = make_config(tmp_path, search=FAST_BEATS)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'beats.db'}")
    storage = study._storage
    mine, dead, unread = (study.ask() for _ in range(3))
    for trial in (dead, unread):
        write_decision(storage, trial._trial_id, Decision("seed"))
    clock = Clock()
    monkeypatch.setattr(waiting_module, "time", types.SimpleNamespace(monotonic=clock))
    line = waiting_module.WaitingLine(lambda _study: config)
    beats, reads = [], 0
    set_attr, get_all_trials = storage.set_trial_system_attr, storage.get_all_trials

    def count_beats(trial_id: int, key: str, value: object) -> None:
        if key == BEAT_ATTR and trial_id == mine._trial_id:
            beats.append(clock.now)
        set_attr(trial_id, key, value)

    def count_reads(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        nonlocal reads
        reads += 1
        return get_all_trials(*args, **kwargs)

    monkeypatch.setattr(storage, "set_trial_system_attr", count_beats)
    monkeypatch.setattr(storage, "get_all_trials", count_reads)
    frozen_mine = storage.get_trial(mine._trial_id)
    for _ in range(30):  # 6 s of looks, each having read `dead`
        line.keep_alive(study, frozen_mine, [storage.get_trial(dead._trial_id)])
        clock.now += 0.2
    # A beat at the first look after each half beat period (looks are 0.2 s apart).
    period = FAST_BEATS["beat_seconds"] / 2
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert beats[0] == 1000.0 and len(beats) >= 6.0 / (period + 0.2), beats
    assert all(period - 1e-9 <= gap < period + 0.2 for gap in gaps), gaps
    assert reads == 1, reads  # requeue_interrupted's, failing the dead trial: none to watch
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    # `dead` never beat for 4 s (the grace): failed; `unread` was never read: left alone.
    assert states[dead.number] == TrialState.FAIL
    assert states[unread.number] == TrialState.RUNNING
    assert states[mine.number] == TrialState.RUNNING


def test_a_dead_trial_found_by_two_watchers_is_retried_once(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'claim.db'}")
    assert needs_beats(study._storage)  # a plain RDB storage: no Optuna heartbeats
    trial = study.ask()
    write_decision(study._storage, trial._trial_id, Decision("seed"))
    assert requeue_interrupted(study, trial._trial_id, claim=True) == trial.number
    assert requeue_interrupted(study, trial._trial_id, claim=True) is None
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(queued) == 1


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"beat_seconds": 0}, r"search\.beat_seconds=0\.0: expected seconds > 0"),
        (
            {"beat_seconds": 10, "beat_grace_seconds": 15},
            r"search\.beat_grace_seconds=15\.0: expected at least twice",
        ),
    ],
)
def test_beat_settings_are_checked(tmp_path: Path, search: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, search=search)


def test_memory_and_heartbeat_storages_need_no_beats(tmp_path: Path) -> None:
    assert not needs_beats(optuna.create_study()._storage)
    assert not needs_beats(make_storage(f"sqlite:///{tmp_path / 'h.db'}"))


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def workers() -> Any:
    group = Workers()
    yield group
    group.kill_all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_killed_workers_trial_behind_the_proxy_is_retried(
    tmp_path: Path, search_assets: Path, workers: Workers
) -> None:
    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    config, db_url = new_study(tmp_path, search_assets, None, "beats", search=FAST_BEATS)
    port = _free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "spnas", "storage-proxy", "--storage", db_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"grpc://127.0.0.1:{port}"
        hang_dir = tmp_path / "hang"
        hang_dir.mkdir()
        (hang_dir / "seed").touch()  # the first seed trial hangs until killed
        engine = {"sleep": 0.2, "hang_dir": str(hang_dir), "hang_seconds": 600.0}
        workers.start(3, config.study.name, url, tmp_path, engine)
        pid_file = hang_dir / "seed.pid"
        deadline = time.monotonic() + SEARCH_TIMEOUT_S
        while not pid_file.exists():
            assert time.monotonic() < deadline, workers.log_tails()
            time.sleep(0.1)
        pid_text, out_dir = pid_file.read_text().split(maxsplit=1)
        number = int(Path(out_dir).name)
        study, _ = load_search_study(config.study.name, url)
        trial = study.get_trials(deepcopy=False)[number]
        assert trial.state == TrialState.RUNNING and trial.system_attrs.get(BEAT_ATTR)
        assert number == min(t.number for t in _running(study))
        killed = workers.by_pid(int(pid_text))
        killed.kill()  # SIGKILL: no cleanup, no final state written, no more beats
        killed.join(timeout=30)
        wait_for_workers(workers, config.study.name, url, SEARCH_TIMEOUT_S)
        survivors = [p for p in workers.procs if p is not killed]
        assert [p.exitcode for p in survivors] == [0, 0], workers.log_tails()
        trials = load_search_study(config.study.name, db_url)[0].get_trials()
        text = describe(trials)
        assert trials[number].state == TrialState.FAIL, text
        (retry,) = retries_of(trials, number)
        assert retry.state == TrialState.COMPLETE, text
        assert Decision.of(retry) == Decision.of(trials[number])
        check_search(trials, config, Path(config.study.artifacts))
    finally:
        os.killpg(proxy.pid, signal.SIGKILL)
        proxy.wait()
