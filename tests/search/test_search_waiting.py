"""How a trial waits for its turn to decide, at the scale of hundreds of workers.

Trials decide in trial-number order. After a barrier, every worker's trial is in line behind
the lower ones; reading the whole history at every look made the waiting workers' reads grow
with the square of their number (measured: the storage proxy saturated at 128 workers). A
waiting trial now reads only the trial ahead of it, and looks less often the further back it
stands. These tests count the storage calls of one waiting trial with a fake clock.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_doubles import SEED_ARCH, FakeEngine, make_config, write_decision

from spnas.arch import SerialCode
from spnas.search import Decision, SPNASSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Clock:
    """Fake ``time`` for the sampler: sleeping advances ``now`` and runs ``on_sleep``."""

    def __init__(self, on_sleep) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(self.now)


def _study(tmp_path: Path, name: str, wait: float = 60.0) -> optuna.Study:
    """A SQLite study searched by :class:`SPNASSampler` (``make_config``), waiting ``wait`` s."""
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / name}",
        sampler=SPNASSampler(make_config(tmp_path), max_wait_seconds=wait, ask_wait_seconds=wait),
        direction="maximize",
    )


@pytest.mark.parametrize("ahead", [1, 6])
def test_a_trial_in_line_reads_only_the_trial_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    """``ahead`` undecided trials below the waiter: the lowest becomes the seed after 20 fake
    seconds and completes at 40, the others decide "idle" one by one after it decided; the
    waiter then decides the round's control. Its looks in between read one trial each: the
    head of the line (the waiter itself only once the head has decided)."""
    import spnas.search._sampler as sampler_module
    import spnas.search._waiting as waiting_module

    study = _study(tmp_path, "line.db", wait=600)
    storage = study._storage
    ids = [storage.create_new_trial(study._study_id) for _ in range(ahead)]
    waiter = storage.get_trial(storage.create_new_trial(study._study_id))
    events = [
        (
            20.0,
            lambda: write_decision(storage, ids[0], Decision("seed", SerialCode.parse(SEED_ARCH))),
        )
    ]
    events += [
        (20.0 + i, lambda i=i: write_decision(storage, ids[i], Decision("idle")))
        for i in range(1, ahead)
    ]
    events += [(40.0, lambda: storage.set_trial_state_values(ids[0], TrialState.COMPLETE, [30.0]))]

    before_the_seed: list[tuple[int, int]] = []  # (looks, sleeps) when the first one decided

    def on_sleep(now: float) -> None:
        if events and events[0][0] <= now and not before_the_seed:
            before_the_seed.append((looks, len(clock.sleeps)))
        while events and events[0][0] <= now:
            events.pop(0)[1]()

    clock = _Clock(on_sleep)
    monkeypatch.setattr(sampler_module, "time", clock)
    monkeypatch.setattr(waiting_module, "time", clock)
    full_reads = looks = watches = 0
    get_all_trials, get_trial = storage.get_all_trials, storage.get_trial

    def count_full(*args, **kwargs):
        nonlocal full_reads, watches
        if kwargs.get("states") == (TrialState.RUNNING,):
            watches += 1  # the liveness watch (SQLite without heartbeats: spnas's beats)
        else:
            full_reads += 1
        return get_all_trials(*args, **kwargs)

    def count_look(*args, **kwargs):
        nonlocal looks
        looks += 1
        return get_trial(*args, **kwargs)

    monkeypatch.setattr(storage, "get_all_trials", count_full)
    monkeypatch.setattr(storage, "get_trial", count_look)

    decision = study.sampler.decide(study, waiter)

    assert decision.kind == "control"
    assert not events, "decided before the seed completed"
    # One full read to find the line, one when it has decided, one per change of the barrier
    # (decided, completed) at most — not one per look.
    assert full_reads <= 4, full_reads
    # The liveness watch reads nothing of its own: it watches the beats of the trials the
    # looks read. Its own read of every running trial, by every waiting worker at every beat,
    # was a large part of the storage proxy's work at 256 workers (docs/benchmarks.md).
    assert watches == 0, watches
    assert looks >= 10, looks
    # Until the head of the line decides, a look reads that one trial, not the waiter too.
    assert before_the_seed[0][0] == before_the_seed[0][1], before_the_seed
    # Behind a barrier, looks slow down (a tenth of the time waited), never beyond 10 s.
    assert max(clock.sleeps) <= sampler_module.MAX_WAIT_STEP_S
    assert len(clock.sleeps) < 200, len(clock.sleeps)


def _line_after_the_seed(tmp_path: Path, name: str, length: int):
    """A study whose seed completed, with ``length`` undecided trials in line after it."""
    study = _study(tmp_path, name)
    storage = study._storage
    seed = storage.create_new_trial(study._study_id)
    write_decision(storage, seed, Decision("seed", SerialCode.parse(SEED_ARCH)))
    storage.set_trial_state_values(seed, TrialState.COMPLETE, [30.0])
    line = [storage.get_trial(storage.create_new_trial(study._study_id)) for _ in range(length)]
    return study, line


def test_the_first_in_line_decides_for_the_whole_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a barrier the lowest trial in line decides for every trial behind it, each as
    it would have decided itself one by one (measured before: at 256 workers the last of
    the line waited 506 s for the decisions ahead of it, one full history read each)."""
    import spnas.search._waiting as waiting_module

    study, line = _line_after_the_seed(tmp_path, "ahead.db", 6)
    first = study.sampler.decide(study, line[0])
    ahead = [Decision.of(study._storage.get_trial(t._trial_id)) for t in line[1:]]
    assert None not in ahead, ahead
    # A waiter behind finds its decision with one look, without a full read of the history.
    full_reads = 0
    get_all_trials = study._storage.get_all_trials

    def count_full(*args, **kwargs):
        nonlocal full_reads
        full_reads += 1
        return get_all_trials(*args, **kwargs)

    monkeypatch.setattr(study._storage, "get_all_trials", count_full)
    assert study.sampler.decide(study, line[-1]) == ahead[-1]
    assert full_reads == 1

    # The same line decided one by one: the same decisions.
    monkeypatch.setattr(waiting_module, "MAX_DECIDED_AHEAD", 0)
    reference_study, reference_line = _line_after_the_seed(tmp_path, "one-by-one.db", 6)
    one_by_one = []
    for trial in reference_line:
        one_by_one.append(reference_study.sampler.decide(reference_study, trial))
        write_decision(reference_study._storage, trial._trial_id, one_by_one[-1])
    assert [first, *ahead] == one_by_one
    # The control's two noise repeats (search.noise_repeats), then the candidates.
    assert [(d.kind, d.repeat) for d in one_by_one[:2]] == [("control", None), ("control", 1)]
    assert [d.kind for d in one_by_one[2:]] == ["serial"] * 4
    assert len({d.arch for d in one_by_one[2:]}) == 4  # four different candidates


def test_deciding_ahead_stops_at_a_barrier(tmp_path: Path) -> None:
    """Nothing is decided ahead past what the line must wait for: behind the seed (a
    barrier), the trials in line stay undecided."""
    study = _study(tmp_path, "barrier.db")
    storage = study._storage
    line = [storage.get_trial(storage.create_new_trial(study._study_id)) for _ in range(3)]
    assert study.sampler.decide(study, line[0]).kind == "seed"
    assert [Decision.of(storage.get_trial(t._trial_id)) for t in line[1:]] == [None, None]


def test_once_the_search_is_done_the_whole_line_is_idle(tmp_path: Path) -> None:
    """At the end of a search with hundreds of workers, the first trial in line finds the
    search done and marks every trial behind it ``idle`` at once."""
    from search_doubles import fake_objective

    study = _study(tmp_path, "done.db")
    study.optimize(fake_objective, n_trials=80)
    storage = study._storage
    line = [storage.get_trial(storage.create_new_trial(study._study_id)) for _ in range(4)]
    assert study.sampler.decide(study, line[0]).kind == "idle"
    assert [Decision.of(storage.get_trial(t._trial_id)).kind for t in line[1:]] == ["idle"] * 3


def test_a_trial_the_storage_could_not_fail_is_handed_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while a trial decides leaves it RUNNING when failing it fails too (the
    database is down): it never beats its heart, so nothing would fail it as stale, and a
    trial behind it may decide for it. The sampler hands its id to the worker
    (``take_unabandoned``), which fails it and queues its retry once the storage answers
    (CI: a PostgreSQL restart during Optuna's ask left such a trial running forever)."""
    import sqlalchemy.exc

    study = _study(tmp_path, "down.db")
    storage = study._storage
    trial = storage.get_trial(storage.create_new_trial(study._study_id))
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))

    def fail(*args, **kwargs):
        raise down

    monkeypatch.setattr(study.sampler, "_decide", fail)
    monkeypatch.setattr(storage, "set_trial_state_values", fail)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        study.sampler.before_trial(study, trial)
    assert study.sampler.take_unabandoned() == [trial._trial_id]
    assert study.sampler.take_unabandoned() == []
    monkeypatch.undo()
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_a_decided_trial_an_error_abandons_is_retried_with_its_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage error after the decision was written (its commit's answer lost, here) fails
    the trial; failed and not retried it would count as a failed attempt of its barrier, which
    would then be decided and trained a second time (CI: two seed/reignite attempts after a
    PostgreSQL restart). The sampler queues its retry with the decision at once."""
    import sqlalchemy.exc

    from spnas.search import _params, _sampler

    study = _study(tmp_path, "abandoned.db")
    storage = study._storage
    trial = storage.get_trial(storage.create_new_trial(study._study_id))
    down = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed"))

    def record_fails(*args, **kwargs):
        _params.record_architecture(*args, **kwargs)  # written, but the answer is lost
        raise down

    monkeypatch.setattr(_sampler, "record_architecture", record_fails)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        study.sampler.before_trial(study, trial)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert Decision.of(trials[0]).kind == "seed"
    assert Decision.of(trials[1]) == Decision.of(trials[0])
    assert trials[1].system_attrs["retry_history"] == [0]
    assert study.sampler.take_unabandoned() == []


def test_a_trial_killed_before_its_first_heartbeat_is_failed_by_the_line(
    tmp_path: Path,
) -> None:
    """Optuna fails only trials whose last heartbeat is old: a worker killed between creating
    its trial and its first heartbeat left it RUNNING for good, and every trial behind it
    waited (CI: stopping every worker at a barrier and starting new ones hung). A trial
    waiting in line fails such trials once they are older than the grace period."""
    import time

    from spnas.storage import make_storage, silent_trials

    storage = make_storage(
        f"sqlite:///{tmp_path / 'silent.db'}", heartbeat_interval=1, grace_period=1
    )
    study = optuna.create_study(
        storage=storage, sampler=SPNASSampler(make_config(tmp_path)), direction="maximize"
    )
    sid = study._study_id
    dead = study._storage.create_new_trial(sid)
    beating = study._storage.get_trial(study._storage.create_new_trial(sid))
    study._storage.record_heartbeat(beating._trial_id)
    assert silent_trials(study._storage, sid) == []  # younger than the grace period
    time.sleep(1.2)
    assert silent_trials(study._storage, sid) == [dead]
    study.sampler._line.keep_alive(study, beating)
    assert study._storage.get_trial(dead).state == TrialState.FAIL
    assert study._storage.get_trial(beating._trial_id).state == TrialState.RUNNING


def test_a_worker_reads_the_whole_history_once_not_after_every_trial(
    tmp_path: Path, search_assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each trial the worker takes the search state that the sampler's ``after_trial``
    replayed anyway, instead of reading and replaying the whole history again: one read per
    trial of every trial, each a read of all unfinished trials under the storage proxy's
    cache lock (docs/benchmarks.md). It reads the history once, when it starts."""
    import spnas.search._worker as worker_module
    from spnas.search import Objective, SearchState, create_search_study, run_worker

    config = make_config(tmp_path, "reads", search_assets)
    create_search_study(config)
    replays: list[int] = []

    def from_trials(trials, *args, **kwargs) -> SearchState:
        replays.append(len(trials))
        return SearchState.from_trials(trials, *args, **kwargs)

    monkeypatch.setattr(
        worker_module, "SearchState", types.SimpleNamespace(from_trials=from_trials)
    )
    state = run_worker(
        config.study.name,
        config.study.storage,
        max_trials=5,
        objective=Objective(config, engine=FakeEngine(sleep=0.0)),
    )
    study = optuna.load_study(study_name=config.study.name, storage=config.study.storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials), trials
    assert replays == [0], replays

    # The state handed over is the history's, as a fresh replay finds it (but for the finish
    # times: after_trial replays the last trial before Optuna stores its own).
    def timeless(state: SearchState) -> SearchState:
        records = tuple(dataclasses.replace(r, finished_at=None) for r in state.records)
        return dataclasses.replace(state, records=records)

    assert timeless(state) == timeless(SearchState.from_trials(trials, config))
