"""SPNASSampler as Optuna users use samplers: ask-and-tell, the study's direction and
objectives, and Optuna's own analysis (importances, slice plot, ``trials_dataframe``)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_doubles import FakeEngine, make_config
from search_doubles import fake_objective as objective

from spnas.exceptions import ConfigError
from spnas.search import (
    Objective,
    SearchState,
    SPNASSampler,
    architecture_distributions,
    get_decision,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_two_asks_in_a_row_return_promptly(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    study = optuna.create_study(
        sampler=SPNASSampler(config, ask_wait_seconds=0.5),
        storage=f"sqlite:///{tmp_path / 'ask.db'}",
        direction="maximize",
    )
    started = time.monotonic()
    first, second = study.ask(), study.ask()
    assert time.monotonic() - started < 5.0  # was: blocked until the first was told
    assert get_decision(first).kind == "seed"
    assert get_decision(second).kind == "idle"  # the seed is a barrier: nothing to do yet
    study.tell(second, state=TrialState.PRUNED)
    study.tell(first, objective(first))
    # Round 1 opens with its control (equal training; two noise repeats), then candidates.
    assert [get_decision(study.ask()).kind for _ in range(2)] == ["control", "control"]
    assert get_decision(study.ask()).kind == "serial"


def test_a_whole_search_through_ask_and_tell(tmp_path: Path, search_assets: Path) -> None:
    """One thread, ``ask``/``tell`` only, the real Objective (fake engine): the search ends."""
    config = make_config(tmp_path, "ask-tell", search_assets)
    study = optuna.create_study(
        sampler=SPNASSampler(config, ask_wait_seconds=0.0),
        storage=config.study.storage,
        direction="maximize",
    )
    study.set_user_attr("spnas:config", config.to_dict())
    run = Objective(config, engine=FakeEngine(sleep=0.0))
    seed, ahead = study.ask(), study.ask()  # the second is asked before the seed is told
    assert (get_decision(seed).kind, get_decision(ahead).kind) == ("seed", "idle")
    study.tell(ahead, state=TrialState.PRUNED)
    study.tell(seed, run(seed))
    while not SearchState.from_trials(study.get_trials(), config).done:
        trial = study.ask()
        assert len(study.trials) < 80, "the search does not end through ask-and-tell"
        try:
            study.tell(trial, run(trial))
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
    trials = study.get_trials()
    kinds = [get_decision(t).kind for t in trials]
    assert {"seed", "serial", "reignite", "parallel_seed", "parallel"} <= set(kinds)
    assert SearchState.from_trials(trials, config).phase == "done"
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_a_study_the_config_does_not_fit_is_refused_at_once(tmp_path: Path) -> None:
    """A multi-objective study is refused before any decision. (A study to the other
    direction than the metric's is searched to its own: test_search_sampler.py.)"""
    config = make_config(tmp_path)
    study = optuna.create_study(sampler=SPNASSampler(config), directions=["maximize", "minimize"])
    with pytest.raises(ConfigError, match="has 2 objectives"):
        study.optimize(objective, n_trials=5)
    (trial,) = study.get_trials()  # no trial ran: the first was refused, undecided
    assert trial.state == TrialState.FAIL and "spnas:kind" not in trial.system_attrs


@pytest.fixture(scope="module")
def finished_plain_study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    root = tmp_path_factory.mktemp("analysis")
    config = make_config(root, serial={"n_stuck": 4})
    study = optuna.create_study(
        sampler=SPNASSampler(config),
        storage=f"sqlite:///{root / 'analysis.db'}",
        direction="maximize",
    )
    study.optimize(objective, n_trials=200)
    study.config = config  # type: ignore[attr-defined]
    return study


def test_the_architecture_is_in_the_trial_params(finished_plain_study: optuna.Study) -> None:
    study = finished_plain_study
    config = study.config  # type: ignore[attr-defined]
    expected = architecture_distributions(config)
    assert study.metric_names == ["AP"]
    for trial in study.get_trials(states=[TrialState.COMPLETE]):
        decision = get_decision(trial)
        assert trial.distributions == expected, trial.number
        assert trial.params["blocks"] == decision.arch.num_blocks
        assert trial.params["stages"] == decision.arch.num_stages
        per_stage = [trial.params[f"blocks_s{i}"] for i in range(1, config.space.max_stages + 1)]
        assert tuple(n for n in per_stage if n) == decision.arch.blocks_per_stage
        subnets = [trial.params[f"subnets_s{i}"] for i in range(1, config.space.max_stages + 1)]
        assert sum(subnets) == trial.params["subnets"]
        assert 0 < trial.params["gmacs"] < expected["gmacs"].high
    parallel = [t for t in study.trials if get_decision(t).kind == "parallel"]
    assert parallel and all(t.params["subnets"] > 0 for t in parallel)


def test_optunas_analysis_sees_the_architecture(finished_plain_study: optuna.Study) -> None:
    pytest.importorskip("pandas")
    study = finished_plain_study
    importances = optuna.importance.get_param_importances(study)
    assert {"blocks", "gmacs", "subnets"} <= set(importances)
    figure = optuna.visualization.plot_param_importances(study)
    assert figure.data and len(figure.data[0].x) >= 3
    slices = optuna.visualization.plot_slice(study, params=["blocks", "gmacs"])
    assert len(slices.data) >= 2
    frame = study.trials_dataframe()
    assert {"params_blocks", "params_gmacs", "value_AP"} <= set(frame.columns), frame.columns
    assert len(frame) == len(study.trials)
