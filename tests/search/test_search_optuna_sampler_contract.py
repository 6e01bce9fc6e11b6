"""SPNASSampler against Optuna's generic sampler tests (issue 20, item 7).

Optuna ships the test cases of its ``tests/samplers_tests/test_samplers.py`` as
:mod:`optuna.testing.pytest_samplers` (``BasicSamplerTestCase``, ``RelativeSamplerTestCase``,
``MultiObjectiveSamplerTestCase``, ``SingleOnlySamplerTestCase``); the classes below run them
with SPNASSampler in their ``sampler`` fixture, exactly as Optuna parametrizes its own samplers.
The module-level tests of that file (reseeding, reproducibility, in another process, pickling,
relative and independent sampling by a fixed sampler) are ported below them, with SPNASSampler
in place of Optuna's samplers. Then the contract the issue names on top: a default (minimize)
study, a maximize study, ``enqueue_trial``, failed and pruned trials told, ``n_jobs=2``, a
pickled sampler deciding in a spawned process, a multi-objective study refused.

Optuna's generic studies are default ``create_study()`` studies: to minimize, while the config's
metric (``AP``) is to maximize. SPNASSampler ranks by the study's own direction (a warning says
the two differ), so those tests apply as they are.

The study config used here (:func:`contract_config`) keeps the search in its first serial round
for the few dozen trials a test runs (``serial.n_stuck`` 1000): SPNASSampler stops the study
(``Study.stop``) once the search is done, and Optuna's tests count on ``study.optimize``
running every trial asked for. That holds for any sampler whose search is not over; it is not
an exception, the tests merely keep within it.

Exceptions, where the premise of one of Optuna's tests does not apply to a sampler whose own
search space (the architecture) is fixed and whose users' parameters go to a fallback sampler:

- ``RelativeSamplerTestCase`` (44 tests) with SPNASSampler's default fallback,
  ``TPESampler()`` (independent, ``multivariate=False``): the tests assume the sampler itself
  samples an arbitrary ``search_space`` in ``sample_relative``. SPNASSampler hands the users'
  parameters to its fallback, and an independent fallback samples nothing relatively (it
  returns ``{}``, as ``TPESampler(multivariate=False)`` does in Optuna, which Optuna therefore
  leaves out of ``TestRelativeSampler``). The premise holds for SPNASSampler with a relative
  fallback: the 44 tests run below with ``TPESampler(multivariate=True)`` as the fallback,
  the first relative sampler of Optuna's own ``TestRelativeSampler`` (its others, CMA-ES and
  GP, need ``cmaes`` or a GP stack that spnas does not install; the fallback is only passed
  through, see :func:`test_sample_relative_and_independent`).
- ``MultiObjectiveSamplerTestCase`` (16 tests): SP-NAS ranks candidates by one metric; the
  sampler is single-objective and belongs in ``SingleOnlySamplerTestCase`` (run below), as
  ``CmaEsSampler`` does in Optuna.
- ``test_sampler_reseed_rng`` is run with Optuna's expectation for a sampler that wraps
  another (``PartialFixedSampler``, ``QMCSampler``): SPNASSampler holds no random state of
  its own (its proposals are seeded by ``config.search.seed`` and the trial number, so that
  every worker decides alike), only its fallback's, which ``reseed_rng`` reseeds.
- ``test_reproducible_in_other_process`` needs a config in the child: it is passed as a
  (picklable) dict, where Optuna's version builds its sampler from a name.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import statistics
import warnings
from collections.abc import Callable
from multiprocessing.managers import DictProxy
from pathlib import Path
from typing import Any
from unittest.mock import patch

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    FixedSampler,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)
from optuna.trial import Trial, TrialState

from spnas.exceptions import ConfigError
from spnas.search import SearchState, SPNASSampler, architecture_distributions, get_decision

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Optuna's generic tests run minimize studies; the config's metric is AP (maximize).
MISMATCH = "SPNASSampler ranks the trials to minimize"


def contract_values(seed: int = 0) -> dict[str, Any]:
    """The study config of these tests, as a dict (it crosses process boundaries as one).

    No file is read: SPNASSampler only decides; the objectives here train nothing.
    """
    from search_doubles import config_dict

    values = config_dict(
        "/nonexistent/spnas-contract",
        "contract",
        serial={"n_stuck": 1000},
        search={"seed": seed, "wait_seconds": 0.01, "barrier_backoff_seconds": 0},
    )
    del values["study"]["storage"]
    return values


@pytest.fixture(scope="module")
def config_values() -> dict[str, Any]:
    return contract_values()


def _spnas(config_values: dict[str, Any], **kwargs: Any) -> Callable[[], BaseSampler]:
    def make() -> BaseSampler:
        return SPNASSampler(config_values, **kwargs)

    return make


# --------------------------------------------------------------------------- Optuna's test cases
class TestBasicSampler(BasicSamplerTestCase):
    """Optuna's ``BasicSamplerTestCase``: SPNASSampler with its default fallback (TPE) and
    with a random one."""

    @pytest.fixture(params=["default", "random fallback"])
    def sampler(
        self, request: pytest.FixtureRequest, config_values: dict[str, Any]
    ) -> Callable[[], Any]:
        if request.param == "default":
            return _spnas(config_values)
        return lambda: SPNASSampler(config_values, fallback_sampler=optuna.samplers.RandomSampler())


class TestRelativeSampler(RelativeSamplerTestCase):
    """Optuna's ``RelativeSamplerTestCase``: SPNASSampler with a relative fallback (see the
    module docstring)."""

    @pytest.fixture
    def sampler(self, config_values: dict[str, Any]) -> Callable[[], BaseSampler]:
        def make() -> BaseSampler:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fallback = optuna.samplers.TPESampler(n_startup_trials=0, multivariate=True)
            return SPNASSampler(config_values, fallback_sampler=fallback)

        return make


class TestSingleOnlySampler(SingleOnlySamplerTestCase):
    """Optuna's ``SingleOnlySamplerTestCase``: a multi-objective study is refused by
    ``sample_independent`` and ``sample_relative`` with a ``ValueError``, as by CmaEsSampler."""

    @pytest.fixture
    def sampler(self, config_values: dict[str, Any]) -> Callable[[], BaseSampler]:
        return _spnas(config_values)


# --------------------------------------------------------------------------- Optuna's module tests
def _objective(trial: Trial) -> float:
    """The objective of Optuna's reseeding and reproducibility tests."""
    a = trial.suggest_float("a", 1, 9)
    b = trial.suggest_float("b", 1, 9, log=True)
    c = trial.suggest_float("c", 1, 9, step=1)
    d = trial.suggest_int("d", 1, 9)
    e = trial.suggest_int("e", 1, 9, log=True)
    f = trial.suggest_int("f", 1, 9, step=2)
    g = trial.suggest_categorical("g", range(1, 10))
    return a + b + c + d + e + f + g


def test_sampler_reseed_rng(config_values: dict[str, Any]) -> None:
    """Optuna's ``test_sampler_reseed_rng``: no random state of its own, a fallback sampler
    whose random state ``reseed_rng`` reseeds, once."""
    sampler = SPNASSampler(config_values)

    def attr_of(owner: Any, cls: type) -> str | None:
        return next((n for n, a in owner.__dict__.items() if isinstance(a, cls)), None)

    assert attr_of(sampler, LazyRandomState) is None
    inner_name = attr_of(sampler, BaseSampler)
    assert inner_name is not None
    inner = sampler.__dict__[inner_name]
    rng_name = attr_of(inner, LazyRandomState)
    assert rng_name is not None
    before = str(inner.__dict__[rng_name].rng.get_state())
    with patch.object(inner, "reseed_rng", wraps=inner.reseed_rng) as spy:
        sampler.reseed_rng()
        assert spy.call_count == 1
    assert str(inner.__dict__[rng_name].rng.get_state()) != before


def test_reseed_rng_change_sampling(config_values: dict[str, Any]) -> None:
    """Optuna's ``test_reseed_rng_change_sampling``."""
    study = optuna.create_study(sampler=SPNASSampler(config_values, seed=1))
    study.optimize(_objective, n_trials=15)
    reseeded = SPNASSampler(config_values, seed=1)
    reseeded.reseed_rng()
    other = optuna.create_study(sampler=reseeded)
    other.optimize(_objective, n_trials=15)
    assert any(study.trials[i].params != other.trials[i].params for i in range(15))


@pytest.mark.parametrize("constant", [False, True], ids=["sum", "constant"])
def test_reproducible(config_values: dict[str, Any], constant: bool) -> None:
    """Optuna's ``test_reproducible`` (a constant objective checks that ties sort alike)."""

    def objective(trial: Trial) -> float:
        value = _objective(trial)
        return 0.0 if constant else value

    def params(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=SPNASSampler(config_values, seed=seed))
        study.optimize(objective, n_trials=15)
        assert len(study.trials) == 15
        return [t.params for t in study.trials]

    first = params(1)
    assert first == params(1)
    assert first != params(2)


def _run_optimize(k: int, values: dict[str, Any], sequences: DictProxy, hashes: DictProxy) -> None:
    """The body of Optuna's ``run_optimize`` (a child process of
    :func:`test_reproducible_in_other_process`)."""
    hashes[k] = hash("nondeterministic hash")
    study = optuna.create_study(sampler=SPNASSampler(values, seed=1))
    study.optimize(_objective, n_trials=15)
    sequences[k] = list(study.trials[-1].params.values())


def test_reproducible_in_other_process(
    config_values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's ``test_reproducible_in_other_process``: fresh interpreters (spawn), string
    hashes differ, the samples do not."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        sequences, hashes = manager.dict(), manager.dict()
        processes = [
            context.Process(target=_run_optimize, args=(k, config_values, sequences, hashes))
            for k in range(3)
        ]
        for process in processes:  # side by side, where Optuna's test runs them in turn
            process.start()
        for process in processes:
            process.join(timeout=300)
            assert process.exitcode == 0
        assert not (hashes[0] == hashes[1] == hashes[2])
        assert sequences[0] == sequences[1] == sequences[2]


def test_pickle(config_values: dict[str, Any]) -> None:
    """Optuna's ``test_pickle_random_sampler``: a restored sampler samples alike."""
    sampler = SPNASSampler(config_values, fallback_sampler=optuna.samplers.RandomSampler(0))
    restored = pickle.loads(pickle.dumps(sampler))
    assert sampler._fallback._rng.rng.bytes(10) == restored._fallback._rng.rng.bytes(10)
    assert restored.config_for(optuna.create_study()) == sampler.config_for(optuna.create_study())


def test_sample_relative_and_independent(config_values: dict[str, Any]) -> None:
    """Optuna's ``test_sample_relative``, through SPNASSampler: the fallback's relative search
    space is sampled by its ``sample_relative``, every other parameter by its
    ``sample_independent``; the architecture is SPNASSampler's own."""
    space: dict[str, BaseDistribution] = {
        "a": FloatDistribution(low=0, high=5),
        "b": CategoricalDistribution(choices=("foo", "bar", "baz")),
        "c": IntDistribution(low=20, high=50),  # not in the relative params
    }
    fixed = FixedSampler(space, {"a": 3.2, "b": "baz"}, 30)
    study = optuna.create_study(sampler=SPNASSampler(config_values, fallback_sampler=fixed))

    def objective(trial: Trial) -> float:
        assert trial.suggest_float("a", 0, 5) == 3.2
        assert trial.suggest_categorical("b", ["foo", "bar", "baz"]) == "baz"
        assert trial.suggest_int("c", 20, 50) == 30
        assert trial.suggest_float("d", 1, 100, log=True) == 30
        assert trial.suggest_float("e", 20, 40) == 30
        return 0.0

    study.optimize(objective, n_trials=10, catch=())
    ours = set(architecture_distributions(SPNASSampler(config_values).config_for(study)))
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert {k: v for k, v in trial.params.items() if k not in ours} == {
            "a": 3.2,
            "b": "baz",
            "c": 30,
            "d": 30,
            "e": 30,
        }
        assert ours <= set(trial.params)


# --------------------------------------------------------------------------- the wider contract
def _user_objective(trial: Trial) -> float:
    """A user's objective: one parameter of its own; the trial carries a decision."""
    get_decision(trial)
    return trial.suggest_float("x", 0, 1)


@pytest.mark.parametrize("direction", [None, "minimize", "maximize"])
def test_a_study_of_either_direction(
    config_values: dict[str, Any], direction: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A default study (minimize), and either explicit direction, run every trial asked for;
    the search ranks by the study's direction; a direction other than the metric's is
    warned about once. The greedy acceptance, so that the round's best is the best value
    (noise-aware acceptance: test_search_noise.py)."""
    search = {**config_values.get("search", {}), "acceptance": "greedy"}
    sampler = SPNASSampler({**config_values, "search": search})
    kwargs = {} if direction is None else {"direction": direction}
    study = optuna.create_study(sampler=sampler, **kwargs)
    with caplog.at_level(logging.WARNING, logger="spnas"):
        study.optimize(_user_objective, n_trials=12)
    assert len(study.trials) == 12
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    kinds = [get_decision(t).kind for t in study.trials]
    assert kinds[:2] == ["seed", "control"] and kinds.count("seed") == 1
    ranked = direction or "minimize"
    config = sampler.config_for(study)
    state = SearchState.from_trials(study.trials, config, ranked)
    assert state.direction == ranked
    controls = [t.value for t in study.trials if get_decision(t).kind == "control"]
    candidates = [t.value for t in study.trials if get_decision(t).kind == "serial"]
    pick = min if ranked == "minimize" else max
    # The reference is the mean of the control's noise repeats.
    assert state.round_best.value == pytest.approx(pick([*candidates, statistics.fmean(controls)]))
    warned = [r for r in caplog.records if MISMATCH in r.getMessage()]
    assert len(warned) == (0 if ranked == "maximize" else 1)


def test_enqueued_trials(config_values: dict[str, Any]) -> None:
    """``study.enqueue_trial``: the enqueued trial is decided like any other, and keeps its
    fixed parameter."""
    study = optuna.create_study(sampler=SPNASSampler(config_values))
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75}, user_attrs={"from": "queue"})
    study.optimize(_user_objective, n_trials=4)
    trials = study.trials
    assert [t.params["x"] for t in trials[:2]] == [0.25, 0.75]
    assert trials[1].user_attrs == {"from": "queue"}
    kinds = [get_decision(t).kind for t in trials[:4]]
    assert kinds == ["seed", "control", "control", "serial"]  # two noise repeats
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_failed_and_pruned_trials_told(config_values: dict[str, Any]) -> None:
    """Ask-and-tell with failures and prunings: a failed seed is decided again; a pruned
    candidate is no improvement."""
    study = optuna.create_study(sampler=SPNASSampler(config_values))
    config = study.sampler.config_for(study)
    seed = study.ask()
    assert get_decision(seed).kind == "seed"
    study.tell(seed, state=TrialState.FAIL)
    retry = study.ask()
    assert get_decision(retry).kind == "seed"
    study.tell(retry, 0.5)
    for value in (0.35, 0.45):  # the control's two noise repeats: mean 0.4
        control = study.ask()
        assert get_decision(control).kind == "control"
        study.tell(control, value)
    candidate = study.ask()
    assert get_decision(candidate).kind == "serial"
    study.tell(candidate, state=TrialState.PRUNED)
    better = study.ask()
    study.tell(better, 0.1)  # minimize: an improvement on the control's 0.4 (σ 0.07)
    again = study.ask()  # noise-aware acceptance: re-evaluated before it becomes the parent
    assert get_decision(again).candidate == get_decision(better).candidate
    assert get_decision(again).repeat == 1
    study.tell(again, 0.2)
    state = SearchState.from_trials(study.trials, config, "minimize")
    assert state.round_best.number == better.number and state.stuck == 0
    assert state.round_best.value == pytest.approx(0.15)
    worse = study.ask()
    study.tell(worse, 0.9)
    assert SearchState.from_trials(study.trials, config, "minimize").stuck == 1


def test_two_jobs(config_values: dict[str, Any]) -> None:
    """``n_jobs=2``: one seed (a barrier), decisions in trial-number order, every trial run."""
    study = optuna.create_study(sampler=SPNASSampler(config_values))
    study.optimize(_user_objective, n_trials=12, n_jobs=2)
    assert len(study.trials) == 12
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    kinds = [get_decision(t).kind for t in study.trials]
    assert kinds[0] == "seed" and kinds.count("seed") == 1
    assert set(kinds[1:]) <= {"control", "serial"}


def _optimize_in_child(sampler_bytes: bytes, url: str, n_trials: int) -> None:
    """A spawned process: the pickled sampler runs trials of the shared study."""
    sampler = pickle.loads(sampler_bytes)
    study = optuna.load_study(study_name="contract", storage=url, sampler=sampler)
    study.optimize(_user_objective, n_trials=n_trials)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_pickled_sampler_in_another_process(
    config_values: dict[str, Any], tmp_path: Path, method: str
) -> None:
    """The sampler pickles, and decides in a fresh process; the parent's search goes on."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    sampler = SPNASSampler(config_values)
    study = optuna.create_study(study_name="contract", storage=url, sampler=sampler)
    study.optimize(_user_objective, n_trials=2)  # caches the study's direction
    context = multiprocessing.get_context(method)
    child = context.Process(target=_optimize_in_child, args=(pickle.dumps(sampler), url, 3))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    study.optimize(_user_objective, n_trials=2)
    trials = study.get_trials()
    assert len(trials) == 7 and all(t.state == TrialState.COMPLETE for t in trials)
    kinds = [get_decision(t).kind for t in trials]
    # The seed, the control's two noise repeats, then candidates.
    assert kinds[:3] == ["seed", "control", "control"] and set(kinds[3:]) == {"serial"}


def test_a_multi_objective_study_is_refused(config_values: dict[str, Any]) -> None:
    """Refused where Optuna's single-objective samplers refuse it (``sample_relative``,
    ``sample_independent``: a ``ValueError``), and before a decision is made, naming the study."""
    study = optuna.create_study(
        study_name="two-goals",
        directions=["maximize", "minimize"],
        sampler=SPNASSampler(config_values),
    )
    expected = r"study 'two-goals' has 2 objectives \(maximize, minimize\)"
    trial = study._storage.get_trial(study._storage.create_new_trial(study._study_id))
    with pytest.raises(ConfigError, match=expected):
        study.sampler.sample_independent(study, trial, "x", FloatDistribution(0, 1))
    with pytest.raises(ValueError, match=expected):
        study.sampler.sample_relative(study, trial, {})
    with pytest.raises(ConfigError, match=expected):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=3)
    refused = study.trials[-1]
    assert refused.state == TrialState.FAIL and "spnas:kind" not in refused.system_attrs
