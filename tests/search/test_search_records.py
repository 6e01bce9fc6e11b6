"""The records of finished trials, kept between decisions (``spnas.search._records``).

A decision parses only the trials that are new or still running; the records of finished
ones are kept per sampler. Kept or not, the state (and so the decision) must be the same: a
worker with a warm cache decides as a restarted one does, and a trial that finished between
two looks is read as finished.
"""

from __future__ import annotations

import copy as copy_module
import datetime
import random
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState
from search_doubles import fake_ap, make_config

import spnas.search._records as records_module
from spnas.search import Decision, SearchConfig, SearchState, SPNASSampler, TrialKind
from spnas.search._records import RecordCache
from spnas.search._signals import requeue_interrupted
from spnas.search._state import Record, retried_numbers

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(root: Path) -> SearchConfig:
    # No backoff before a failed barrier's next attempt: the decision would depend on the
    # clock, and the cold and warm decisions below are taken a moment apart.
    return make_config(
        root,
        serial={"n_mutations": 2, "n_stuck": 3, "n_rounds": 1},
        parallel={"n_stuck": 3, "budget_ratio": 2.5},
        search={"seed": 0, "wait_seconds": 0.01, "barrier_backoff_seconds": 0.0},
    )


def _study(name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(
        study_name=name, storage=InMemoryStorage(), direction="maximize", sampler=sampler
    )


def _cold_decision(study: optuna.Study, config: SearchConfig) -> tuple[int, Decision | None]:
    """The next ask's decision from a new sampler (a restarted worker) on a copy of ``study``."""
    storage = InMemoryStorage()
    optuna.copy_study(
        from_study_name=study.study_name, from_storage=study._storage, to_storage=storage
    )
    copy = optuna.load_study(
        study_name=study.study_name,
        storage=storage,
        sampler=SPNASSampler(config, ask_wait_seconds=0.0),
    )
    trial = copy.ask()
    return trial.number, Decision.of(storage.get_trial(trial._trial_id))


def _finish(study: optuna.Study, trial: optuna.Trial, rng: random.Random) -> str:
    """End a running trial: mostly completed, sometimes pruned, failed, or failed and
    queued for a retry (as a preempted worker's trial is)."""
    decision = Decision.of(study._storage.get_trial(trial._trial_id))
    assert decision is not None
    draw = rng.random()
    if decision.kind in (TrialKind.IDLE, TrialKind.EXHAUSTED) or 0.80 <= draw < 0.87:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    if draw < 0.80:
        study.tell(trial, fake_ap(decision.kind, decision.arch, decision.parallel) + rng.random())
        return "complete"
    if draw < 0.93:
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    assert requeue_interrupted(study, trial._trial_id) == trial.number
    return "retried"


def _retry_late(study: optuna.Study, rng: random.Random) -> bool:
    """Queue a retry of a failure that nothing retried yet, long after it failed (as
    ``spnas resume`` or a user's retry callback may): its record leaves the history."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    failed = [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.number not in retried and Decision.of(t) is not None
    ]
    if not failed:
        return False
    return requeue_interrupted(study, rng.choice(failed)._trial_id) is not None


@pytest.mark.parametrize("n_stuck", [3, 12])
def test_warm_cache_decides_as_a_cold_one(tmp_path: Path, n_stuck: int) -> None:
    """Over random histories (trials asked, left running, finished in any order, failed,
    retried, re-evaluated; serial and parallel phases; short rounds and long ones), every
    decision of one long-lived sampler equals that of a new sampler on the same history, and
    every state replayed from kept records, and with what replays kept of the history's head
    (spnas.search._memo), equals a cold replay, the networks it avoids included."""
    config = make_config(
        tmp_path,
        serial={"n_mutations": 2, "n_stuck": n_stuck, "n_rounds": 1},
        parallel={"n_stuck": n_stuck, "budget_ratio": 2.5},
        search={"seed": 0, "wait_seconds": 0.01, "barrier_backoff_seconds": 0.0},
    )
    phases: set[str] = set()
    ends: set[str] = set()
    repeats = served = 0
    for seed in range(4):
        rng = random.Random(seed)
        study = _study(f"warm-{seed}", SPNASSampler(config, ask_wait_seconds=0.0))
        cache = RecordCache()
        running: list[optuna.Trial] = []
        for _ in range(40 * n_stuck):
            trials = study.get_trials(deepcopy=False)
            cold_state = SearchState.from_trials(trials, config, "maximize")
            reader = cache.reader(study)
            warm_records = reader.records(trials)
            assert SearchState.from_records(warm_records, config, "maximize") == cold_state
            memo_state = reader.state(trials, config, "maximize")
            assert memo_state == cold_state
            assert memo_state.taken() == cold_state.taken()
            assert memo_state.taken_serial() == cold_state.taken_serial()
            assert memo_state.failures() == cold_state.failures()
            served += memo_state._fixed is not None
            phases.add(cold_state.phase)
            if cold_state.done:
                break
            if running and (len(running) >= 3 or rng.random() < 0.5):
                ends.add(_finish(study, running.pop(rng.randrange(len(running))), rng))
                continue
            if rng.random() < 0.03 and _retry_late(study, rng):
                ends.add("retried late")
                continue
            number, cold = _cold_decision(study, config)
            trial = study.ask()
            assert trial.number == number
            assert Decision.of(study._storage.get_trial(trial._trial_id)) == cold
            repeats += bool(cold and cold.repeat and cold.kind != TrialKind.CONTROL)
            running.append(trial)
    # The histories went through what the cache and the memo must get right.
    assert {"seed", "serial", "parallel"} <= phases
    assert {"complete", "pruned", "failed", "retried", "retried late"} <= ends
    assert repeats >= 2 and served >= 50, (repeats, served)


def test_a_trial_that_finished_since_the_last_look_is_read_again(tmp_path: Path) -> None:
    config = _config(tmp_path)
    study = _study("finish", SPNASSampler(config, ask_wait_seconds=0.0))
    seed = study.ask()
    cache = RecordCache()
    (before,) = cache.reader(study).records(study.get_trials(deepcopy=False))
    assert before.state == TrialState.RUNNING and before.value is None
    study.tell(seed, 25.0)
    (after,) = cache.reader(study).records(study.get_trials(deepcopy=False))
    assert after.state == TrialState.COMPLETE and after.value == 25.0
    assert after.finished_at is not None
    state = SearchState.from_records(cache.reader(study).records(study.get_trials()), config)
    assert state.next_kind == TrialKind.CONTROL  # the seed is done: its round begins


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the trials the cache parses, in order."""
    numbers: list[int] = []
    parse = records_module.trial_record

    def counting(trial: FrozenTrial) -> Record | None:
        numbers.append(trial.number)
        return parse(trial)

    monkeypatch.setattr(records_module, "trial_record", counting)
    return numbers


def _decided_study(name: str, config: SearchConfig, finished: int) -> optuna.Study:
    """The seed and ``finished - 1`` more trials completed, then one trial running."""
    study = _study(name, SPNASSampler(config, ask_wait_seconds=0.0))
    study.tell(study.ask(), 25.0)  # the seed
    for _ in range(finished - 1):
        study.tell(study.ask(), 20.0)  # its controls, then candidates
    study.ask()
    return study


def test_finished_trials_are_parsed_once(tmp_path: Path, parsed: list[int]) -> None:
    """A second look parses only the trials that are new or still running."""
    study = _decided_study("once", _config(tmp_path), finished=4)
    parsed.clear()  # what the study's own sampler parsed
    cache = RecordCache()
    trials = study.get_trials(deepcopy=False)
    reader = cache.reader(study)
    first = reader.records(trials)
    reader.records(trials)  # the same look again: nothing parsed twice
    assert sorted(parsed) == [0, 1, 2, 3, 4]
    parsed.clear()
    assert cache.reader(study).records(study.get_trials(deepcopy=False)) == first
    assert parsed == [4]


def test_records_are_kept_per_storage(tmp_path: Path) -> None:
    """Two studies whose trials have the same storage ids (two in-memory storages) and
    different values: each is read as it is."""
    config = _config(tmp_path)
    cache = RecordCache()
    values = []
    for value in (21.0, 27.0):
        study = _study("same-name", SPNASSampler(config, ask_wait_seconds=0.0))
        study.tell(study.ask(), value)
        (record,) = cache.reader(study).records(study.get_trials(deepcopy=False))
        values.append(record.value)
    assert values == [21.0, 27.0]


def test_the_cache_is_bounded(tmp_path: Path, parsed: list[int]) -> None:
    """Past ``max_records`` finished trials, the others are parsed at every look, and
    still read right."""
    config = _config(tmp_path)
    study = _decided_study("bounded", config, finished=5)
    cache = RecordCache(max_records=2)
    trials = study.get_trials(deepcopy=False)
    cold = SearchState.from_trials(trials, config).records
    assert cache.reader(study).records(trials) == cold
    parsed.clear()
    assert cache.reader(study).records(trials) == cold
    assert parsed == [2, 3, 4, 5]


@pytest.fixture
def looked_up(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the trials whose records a reader looks up, kept or parsed."""
    numbers: list[int] = []
    record = records_module.RecordReader.record

    def counting(self: records_module.RecordReader, trial: FrozenTrial) -> Record | None:
        numbers.append(trial.number)
        return record(self, trial)

    monkeypatch.setattr(records_module.RecordReader, "record", counting)
    return numbers


def test_a_look_walks_only_the_trials_after_the_head(tmp_path: Path, looked_up: list[int]) -> None:
    """The finished trials before the first running one are kept as one head: a later look
    reads none of them, and reads the same records as a cold replay."""
    config = _config(tmp_path)
    study = _decided_study("head", config, finished=6)
    trials = study.get_trials(deepcopy=False)
    cache = RecordCache()
    cache.reader(study).records(trials)
    looked_up.clear()
    assert cache.reader(study).records(trials) == SearchState.from_trials(trials, config).records
    assert looked_up == [6]  # the running trial alone
    # A trial finished out of order (after one still running) is not in the head.
    study.tell(study.ask(), 20.0)
    looked_up.clear()
    trials = study.get_trials(deepcopy=False)
    assert cache.reader(study).records(trials) == SearchState.from_trials(trials, config).records
    assert looked_up == [6, 7]


def test_a_failed_trial_of_the_head_retried_later_leaves_the_records(tmp_path: Path) -> None:
    """A look can keep a failed trial in the head before its retry is queued (another worker
    fails it, then queues the retry in a second write): once the retry exists, the failure is
    superseded, as in a cold replay."""
    config = _config(tmp_path)
    study = _decided_study("retried-head", config, finished=3)
    running = study.get_trials(deepcopy=False)[-1]
    study.tell(running.number, state=TrialState.FAIL)
    cache = RecordCache()
    before = cache.reader(study).records(study.get_trials(deepcopy=False))
    assert before[-1].number == running.number and before[-1].state == TrialState.FAIL
    assert requeue_interrupted(study, running._trial_id) == running.number
    trials = study.get_trials(deepcopy=False)
    after = cache.reader(study).records(trials)
    assert after == SearchState.from_trials(trials, config).records
    assert running.number not in [r.number for r in after]
    assert after[-1].state == TrialState.WAITING  # the retry, with the same decision
    assert after[-1].decision == before[-1].decision


def test_a_trial_read_apart_is_never_kept(tmp_path: Path) -> None:
    """``apart``: the sampler's copy of a trial as it will be stored (its finish time set
    by the sampler, not the storage) is read, but neither it nor the trials after it join
    the head or the kept records."""
    config = _config(tmp_path)
    study = _decided_study("apart", config, finished=3)
    trials = study.get_trials(deepcopy=False)
    copy = copy_module.copy(trials[-1])  # as after_trial copies it
    copy.state, copy.values = TrialState.COMPLETE, [30.0]
    copy.datetime_complete = datetime.datetime(2000, 1, 1)
    cache = RecordCache()
    read = cache.reader(study).records([*trials[:-1], copy], apart=copy)
    assert read[-1].value == 30.0 and read[-1].finished_at == datetime.datetime(2000, 1, 1)
    study.tell(trials[-1].number, 30.0)
    stored = study.get_trials(deepcopy=False)
    (last,) = [r for r in cache.reader(study).records(stored) if r.number == copy.number]
    assert last.finished_at == stored[-1].datetime_complete != datetime.datetime(2000, 1, 1)
