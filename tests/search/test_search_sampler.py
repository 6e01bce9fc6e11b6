"""SPNASSampler in a plain ``optuna.create_study`` (the README's Python API), in one process.

Your own objective reads the decision with ``spnas.search.get_decision(trial)``. Once the
search is done the sampler stops the study, so ``study.optimize(objective, n_trials=N)`` with a
generous ``N`` ends there. A trial that cannot be decided (asked after the end by another
worker, or asked ahead in ask-and-tell) gets the kind ``idle``: nothing to train, and the
objective should ``raise optuna.TrialPruned()`` for it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from search_doubles import SEED_ARCH, fake_ap, frozen, make_config
from search_doubles import fake_objective as objective

from spnas.arch import SerialCode
from spnas.exceptions import ConfigError
from spnas.search import (
    CONFIG_ATTR,
    Decision,
    SearchState,
    SPNASSampler,
    get_decision,
    verification_plan,
)
from spnas.storage import make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def kinds_of(study: optuna.Study) -> list[str]:
    return [get_decision(t).kind for t in study.get_trials()]


def test_plain_optuna_study_runs_the_whole_search(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    study = optuna.create_study(
        sampler=SPNASSampler(config),
        storage=f"sqlite:///{tmp_path / 'plain.db'}",
        direction="maximize",
    )
    study.optimize(objective, n_trials=60)
    trials = study.get_trials()
    state = SearchState.from_trials(trials, config)
    assert state.phase == "done" and state.done
    kinds = kinds_of(study)
    assert kinds[0] == "seed"
    assert {"seed", "serial", "reignite", "parallel_seed", "parallel"} <= set(kinds)
    assert kinds.count("reignite") == config.serial.n_rounds == 1
    # Order of the phases: seed, serial round 1, reignite, serial round 2, parallel.
    first = {kind: kinds.index(kind) for kind in set(kinds)}
    assert first["seed"] < first["serial"] < first["reignite"] < first["parallel_seed"]
    assert first["parallel_seed"] < first["parallel"]
    # The sampler stopped the study when the search was done: no idle trial at the end.
    assert "idle" not in kinds and len(kinds) < 60
    # Verification ends it: every planned network once per repeat.
    assert kinds[-1] == "verify"
    assert kinds.count("verify") == len(verification_plan(state)) * config.verify.repeats
    assert all(
        t.state == TrialState.COMPLETE for t in trials if get_decision(t).kind != "exhausted"
    )
    # The best SPNet is the best of the parallel phase; it descends from round 2's best.
    best = state.best_parallel
    parallel_values = [
        t.value
        for t in trials
        if get_decision(t).kind in ("parallel_seed", "parallel")
        or (get_decision(t).kind == "control" and get_decision(t).parallel is not None)
    ]
    assert best.value == max(parallel_values)
    assert get_decision(trials[best.number]).arch == state.round_best.arch


def test_users_own_parameters_go_to_the_fallback_sampler(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    class Spy(optuna.samplers.RandomSampler):
        calls = 0

        def sample_independent(self, study, trial, param_name, param_distribution):
            type(self).calls += 1
            return super().sample_independent(study, trial, param_name, param_distribution)

    def tuned(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        decision = get_decision(trial)
        if decision.kind == "idle":
            raise optuna.TrialPruned()
        return fake_ap(decision.kind, decision.arch, decision.parallel) + lr

    study = optuna.create_study(
        sampler=SPNASSampler(config, fallback_sampler=Spy(seed=0)),
        storage=f"sqlite:///{tmp_path / 'lr.db'}",
        direction="maximize",
    )
    study.optimize(tuned, n_trials=40)
    trials = study.get_trials()
    assert SearchState.from_trials(trials, config).done
    lrs = [t.params["lr"] for t in trials]
    assert all(1e-3 <= lr <= 1e-1 for lr in lrs) and len(set(lrs)) == len(lrs) >= 8
    assert Spy.calls == len(trials)


def test_minimizing_a_metric(tmp_path: Path) -> None:
    config = make_config(tmp_path, data={"metric": "LAMR"}, final={"enabled": True})

    def lamr(trial: optuna.Trial) -> float:
        decision = get_decision(trial)
        if decision.kind == "idle":
            raise optuna.TrialPruned()
        return 1.0 - fake_ap(decision.kind, decision.arch, decision.parallel) / 100.0

    study = optuna.create_study(sampler=SPNASSampler(config), direction="minimize")
    study.optimize(lamr, n_trials=60)
    state = SearchState.from_trials(study.get_trials(), config)
    assert state.phase == "done"
    kinds = kinds_of(study)
    assert kinds.count("final") == 1 and kinds[-1] == "final" and len(kinds) < 60
    parallel_values = [
        t.value for t in study.get_trials() if get_decision(t).kind in ("parallel_seed", "parallel")
    ]
    assert state.best_parallel.value == min(parallel_values)


def test_a_study_to_the_other_direction_is_searched_to_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The study's direction ranks the trials; the config's metric direction only sets up the
    studies spnas creates. A study to minimize AP (maximize) runs, warned about once."""
    config = make_config(tmp_path)
    assert config.direction == "maximize"
    study = optuna.create_study(sampler=SPNASSampler(config), direction="minimize")
    with caplog.at_level(logging.WARNING, logger="spnas"):
        study.optimize(objective, n_trials=60)
    warned = [r for r in caplog.records if "SPNASSampler ranks the trials to minimize" in r.message]
    assert len(warned) == 1, [r.message for r in caplog.records]
    assert "data.metric='AP' is to maximize" in warned[0].message
    assert study.metric_names == ["AP"]
    trials = study.get_trials()
    state = SearchState.from_trials(trials, config, study.direction)
    assert state.phase == "done" and state.direction == "minimize"
    assert "idle" not in kinds_of(study) and len(trials) < 60  # the sampler stopped the study
    parallel_values = [
        t.value
        for t in trials
        if get_decision(t).kind in ("parallel_seed", "parallel")
        or (get_decision(t).kind == "control" and get_decision(t).parallel is not None)
    ]
    assert state.best_parallel.value == min(parallel_values)
    # Ranked to the config's direction instead, the same history has another best.
    assert SearchState.from_trials(trials, config).best_parallel != state.best_parallel


@pytest.mark.parametrize(
    ("direction", "best"),
    [(None, 3), ("maximize", 3), (StudyDirection.MAXIMIZE, 3), ("minimize", 2)],
    ids=["config", "maximize", "StudyDirection.MAXIMIZE", "minimize"],
)
def test_the_state_ranks_by_the_direction_it_is_given(
    tmp_path: Path, direction: str | StudyDirection | None, best: int
) -> None:
    config = make_config(
        tmp_path, search={"comparison": "greedy", "acceptance": "greedy"}
    )  # AP: maximize
    arch = SerialCode.parse(SEED_ARCH)
    trials = [
        frozen(0, Decision("seed", arch=arch), TrialState.COMPLETE, 25.0),
        frozen(
            1,
            Decision("serial", arch=SerialCode.parse("BB(111,d1,d1,d1)"), parent=0, round=1),
            TrialState.COMPLETE,
            30.0,
        ),
        frozen(
            2,
            Decision("serial", arch=SerialCode.parse("BB(1,d11,d1,d1)"), parent=0, round=1),
            TrialState.COMPLETE,
            20.0,
        ),
        frozen(
            3,
            Decision("serial", arch=SerialCode.parse("BB(11,d11,d1,d1)"), parent=1, round=1),
            TrialState.COMPLETE,
            31.0,
        ),
    ]
    state = SearchState.from_trials(trials, config, direction)
    assert state.round_best.number == best
    assert state.direction == ("minimize" if best == 2 else "maximize")
    with pytest.raises(ValueError, match="expected 'maximize' or 'minimize'"):
        SearchState.from_trials(trials, config, "max")


def test_a_multi_objective_study_is_refused_where_optunas_samplers_refuse_it(
    tmp_path: Path,
) -> None:
    """As CmaEsSampler: ``sample_independent`` and ``sample_relative`` raise a ValueError
    (ConfigError is one) naming the study; no decision is made either."""
    config = make_config(tmp_path)
    study = optuna.create_study(
        study_name="pareto", sampler=SPNASSampler(config), directions=["maximize", "minimize"]
    )
    trial = study._storage.get_trial(study._storage.create_new_trial(study._study_id))
    expected = "study 'pareto' has 2 objectives .*multi-objective optimization.*'AP'"
    with pytest.raises(ConfigError, match=expected):
        study.sampler.sample_independent(
            study, trial, "lr", optuna.distributions.FloatDistribution(0, 1)
        )
    with pytest.raises(ConfigError, match=expected):
        study.sampler.sample_relative(study, trial, {})
    assert isinstance(ConfigError("x"), ValueError)


def test_config_from_the_study_user_attribute(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    study = optuna.create_study(sampler=SPNASSampler(), direction="maximize")
    with pytest.raises(ConfigError, match=CONFIG_ATTR):
        study.optimize(objective, n_trials=1)
    study = optuna.create_study(sampler=SPNASSampler(), direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    study.optimize(objective, n_trials=1)
    assert kinds_of(study) == ["seed"]


def test_get_decision_needs_the_sampler() -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ConfigError, match="SPNASSampler"):
        get_decision(trial)


def test_waiting_gives_up_after_max_wait_seconds(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    study = optuna.create_study(
        sampler=SPNASSampler(config, max_wait_seconds=0.5),
        storage=f"sqlite:///{tmp_path / 'wait.db'}",
        direction="maximize",
    )
    # Another worker's seed runs (a trial that stays RUNNING): this one waits, then idles.
    study._storage.create_new_trial(study._study_id, template_trial=_seed_trial())
    started = time.monotonic()
    study.optimize(objective, n_trials=1)
    assert time.monotonic() - started >= 0.5
    assert kinds_of(study) == ["seed", "idle"]


def _seed_trial() -> FrozenTrial:
    """A running seed trial, as another worker leaves it in the storage."""
    return frozen(0, Decision("seed", arch=SerialCode.parse(SEED_ARCH)), TrialState.RUNNING)


def test_waiting_trial_steps_aside_for_a_queued_retry(tmp_path: Path) -> None:
    """A worker waiting for a barrier whose retry is queued (WAITING) must not wait forever:
    its trial turns idle, and the worker's next trial takes the retry from the queue."""
    config = make_config(tmp_path)
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    # decide() runs here outside study.optimize: let it wait as a worker's trial does.
    study = optuna.create_study(
        sampler=SPNASSampler(config, ask_wait_seconds=60),
        storage=make_storage(url),
        direction="maximize",
    )
    storage, study_id = study._storage, study._study_id
    seed = _seed_trial()
    # Trial 0: the seed of a worker that died; trial 1: this worker's trial, waiting for it.
    seed_id = storage.create_new_trial(study_id, template_trial=seed)
    storage.record_heartbeat(seed_id)  # running: its worker beats (else it is failed as silent)
    waiting_id = storage.create_new_trial(study_id)
    waiter = storage.get_trial(waiting_id)
    decided: list[Decision] = []
    thread = threading.Thread(
        target=lambda: decided.append(study.sampler.decide(study, waiter)), daemon=True
    )
    thread.start()
    time.sleep(0.5)
    assert not decided, "must wait while the seed runs"
    # The seed is found stale: failed, and its retry (same decision) queued as trial 2.
    storage.set_trial_state_values(seed_id, TrialState.FAIL)
    retry = frozen(2, Decision.of(seed), TrialState.WAITING, retry_of=[0])
    storage.create_new_trial(study_id, template_trial=retry)
    thread.join(timeout=30)
    assert decided and decided[0].kind == "idle"
    # The worker goes on: its next trial is the queued retry, which keeps its decision.
    study.optimize(objective, n_trials=1)
    trials = study.get_trials()
    assert trials[2].state == TrialState.COMPLETE
    assert get_decision(trials[2]) == Decision.of(seed)


def test_a_second_retry_of_the_same_trial_stands_down(tmp_path: Path) -> None:
    """Two workers that fail the same stale trial at once (SQLite has no row locks) each
    queue a retry (seen in CI: the reignition retried twice). The lower-numbered retry runs
    it; the other turns idle and is pruned, so the barrier trains once."""
    config = make_config(tmp_path)
    study = optuna.create_study(
        sampler=SPNASSampler(config),
        storage=make_storage(f"sqlite:///{tmp_path / 'twice.db'}"),
        direction="maximize",
    )
    storage, study_id = study._storage, study._study_id
    seed = frozen(0, Decision("seed", arch=SerialCode.parse(SEED_ARCH)), TrialState.FAIL)
    storage.create_new_trial(study_id, template_trial=seed)
    for number in (1, 2):
        retry = frozen(number, Decision.of(seed), TrialState.WAITING, retry_of=[0])
        storage.create_new_trial(study_id, template_trial=retry)
    study.optimize(objective, n_trials=3)
    trials = study.get_trials()
    assert trials[1].state == TrialState.COMPLETE and get_decision(trials[1]) == Decision.of(seed)
    assert trials[2].state == TrialState.PRUNED
    assert get_decision(trials[2]) == Decision("idle", round=0)
    # The search goes on from the one seed: the next trial opens round 1.
    assert get_decision(trials[3]).kind in ("control", "serial")
    state = SearchState.from_trials(trials, config)
    assert [r.number for r in state.of_kind("seed")] == [1]


class _FakeClock:
    """Stands in for the sampler's ``time`` module: sleeping advances a fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("heartbeat", [True, False])
def test_waiting_trial_looks_once_per_heartbeat_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heartbeat: bool
) -> None:
    """A waiting trial beats its own heart; with a 1 s heartbeat it must not sleep longer, or
    other workers fail it as stale (grace 3 s) while it waits for a long barrier."""
    import spnas.search._sampler as sampler_module
    import spnas.search._waiting as waiting_module

    config = make_config(tmp_path, search={"wait_seconds": 0.5})
    url = f"sqlite:///{tmp_path / 'beat.db'}"
    storage = make_storage(url, heartbeat_interval=1, grace_period=3) if heartbeat else url
    study = optuna.create_study(
        sampler=SPNASSampler(config, max_wait_seconds=120, ask_wait_seconds=120),
        storage=storage,
        direction="maximize",
    )
    study._storage.create_new_trial(study._study_id, template_trial=_seed_trial())
    clock = _FakeClock()
    monkeypatch.setattr(sampler_module, "time", clock)
    monkeypatch.setattr(waiting_module, "time", clock)
    waiter = study._storage.get_trial(study._storage.create_new_trial(study._study_id))
    assert study.sampler.decide(study, waiter).kind == "idle"  # gave up after 120 fake s
    if heartbeat:
        assert max(clock.sleeps) <= 1.0
    else:
        assert max(clock.sleeps) == sampler_module.MAX_WATCH_STEP_S  # the barrier alone is read


@pytest.mark.parametrize("retried", [True, False])
def test_a_fresh_failure_waits_for_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retried: bool
) -> None:
    """Optuna fails a stale trial, then queues its retry: two steps. A worker deciding in
    between must not start a second attempt of the barrier (seen: the seed trained twice)."""
    import spnas.search._sampler as sampler_module
    import spnas.search._waiting as waiting_module

    # No back-off between barrier attempts: the wait measured here is the retry's settling.
    config = make_config(tmp_path, search={"barrier_backoff_seconds": 0})
    storage = make_storage(f"sqlite:///{tmp_path / 'settle.db'}")  # heartbeats on
    sampler = SPNASSampler(config, ask_wait_seconds=60)  # waits as a worker's trial does
    study = optuna.create_study(sampler=sampler, storage=storage, direction="maximize")
    storage, study_id = study._storage, study._study_id
    seed_id = storage.create_new_trial(study_id, template_trial=_seed_trial())
    storage.set_trial_state_values(seed_id, TrialState.FAIL)  # stale: failed, not yet retried
    waiter = storage.get_trial(storage.create_new_trial(study_id))
    clock = _FakeClock()
    if retried:
        sleep = clock.sleep

        def sleep_then_retry(seconds: float) -> None:
            if not clock.sleeps:  # the retry lands while the waiter sleeps the first time
                retry = frozen(2, Decision.of(_seed_trial()), TrialState.WAITING, retry_of=[0])
                storage.create_new_trial(study_id, template_trial=retry)
            sleep(seconds)

        clock.sleep = sleep_then_retry  # type: ignore[method-assign]
    monkeypatch.setattr(sampler_module, "time", clock)
    monkeypatch.setattr(waiting_module, "time", clock)
    decision = study.sampler.decide(study, waiter)
    if retried:
        assert decision.kind == "idle"  # steps aside: its worker's next trial is the retry
        assert clock.now < waiting_module.RETRY_SETTLE_S
    else:
        assert decision.kind == "seed"  # no retry came: the state machine's own retry
        assert clock.now >= waiting_module.RETRY_SETTLE_S


def test_the_decision_is_published_kind_last(tmp_path: Path) -> None:
    """Attributes are written one by one; ``spnas:kind`` marks a decision as present, so it
    must come last, or another worker reads a half decision (a barrier without its round) and
    decides the same barrier again (seen: two reignitions of round 1)."""
    config = make_config(tmp_path)
    study = optuna.create_study(sampler=SPNASSampler(config), direction="maximize")
    written: list[str] = []
    setter = study._storage.set_trial_system_attr

    def record(trial_id: int, key: str, value: object) -> None:
        written.append(key)
        setter(trial_id, key, value)

    study._storage.set_trial_system_attr = record  # type: ignore[method-assign]
    study.optimize(objective, n_trials=1)
    spnas_keys = [k for k in written if k.startswith("spnas:")]
    assert spnas_keys == ["spnas:decision", "spnas:kind"]


def test_an_spnet_without_subnets_is_verified_once_as_the_seed() -> None:
    """``BB(...) (0,0,0,0)`` is the serial network itself: retraining it again under the role
    "spnet" would train the seed's network twice (identical values, twice the time)."""
    from types import SimpleNamespace

    from spnas.arch import ParallelCode, SerialCode
    from spnas.search import Best

    seed_arch = SerialCode.parse("BB(11,d1,d1,d1)")
    seed = SimpleNamespace(number=0, value=20.0, decision=Decision("seed", arch=seed_arch, round=0))
    spnet = Best(5, seed_arch, ParallelCode.parse("(0,0,0,0)"), 21.0)
    state = SimpleNamespace(records=[seed], round_bests={}, best_parallel=spnet)
    assert [role for role, _ in verification_plan(state)] == ["seed"]
    with_subnets = Best(6, seed_arch, ParallelCode.parse("(0,1,0,0)"), 22.0)
    state.best_parallel = with_subnets
    assert [role for role, _ in verification_plan(state)] == ["seed", "spnet"]
