"""Measured noise and noise-aware acceptance (docs/design.md §4.1): a round's control trains
``search.noise_repeats`` times with other training seeds; their spread is σ_trial, their mean
the round's reference, and ``spnas status`` shows σ_trial per round next to the spread of the
round's candidates. A candidate replaces the best only by beating it by more than
``accept_z`` × σ_trial, and again as the mean with a re-evaluation (another seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState
from search_doubles import SEED_ARCH, FakeEngine, frozen, make_config
from search_doubles import seed_decision as seed

import spnas.cli
from spnas.arch import SerialCode
from spnas.exceptions import ConfigError
from spnas.search import (
    WEIGHTS_ATTR,
    Decision,
    Objective,
    SearchConfig,
    SearchState,
    SPNASSampler,
    create_search_study,
    load_search_study,
    run_worker,
    summarize,
)

C, R, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL


def control(repeat: int | None = None) -> Decision:
    return Decision("control", arch=SerialCode.parse(SEED_ARCH), parent=0, round=1, repeat=repeat)


def serial(i: int, repeat: int | None = None) -> Decision:
    return Decision(
        "serial",
        arch=SerialCode.parse(f"BB({'1' * (i + 2)},d1,d1,d1)"),
        parent=0,
        ops=(f"op{i}",),
        round=1,
        repeat=repeat,
    )


@pytest.fixture
def config(tmp_path: Path) -> SearchConfig:
    return make_config(tmp_path, serial={"n_stuck": 3})  # noise_repeats: 2, the default


def decide(trials: list, config: SearchConfig) -> Decision:
    state = SearchState.from_trials(trials, config)
    assert state.next_kind is not None, state.waiting_for
    return SPNASSampler(config)._decision(state, len(trials))


@pytest.mark.parametrize("value", [0, 11, -1])
def test_noise_repeats_out_of_range_is_refused(tmp_path: Path, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"search\.noise_repeats={value}: expected an integer"):
        make_config(tmp_path, search={"noise_repeats": value})


def test_noise_repeats_must_be_an_integer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="noise_repeats"):
        make_config(tmp_path, search={"noise_repeats": 1.5})


def test_the_control_is_decided_once_per_noise_repeat_before_any_candidate(
    config: SearchConfig,
) -> None:
    trials = [frozen(0, seed(), C, 20.0)]
    first = decide(trials, config)
    assert first.kind == "control" and first.repeat is None  # the first: as before
    trials.append(frozen(1, first, R))
    second = decide(trials, config)
    assert second.kind == "control" and second.repeat == 1
    assert (second.arch, second.parent, second.round) == (first.arch, 0, 1)
    trials.append(frozen(2, second, R))
    assert decide(trials, config).kind == "serial"  # candidates train beside the controls


def test_a_failed_noise_repeat_is_decided_again_as_the_same_repeat(config: SearchConfig) -> None:
    trials = [frozen(0, seed(), C, 20.0), frozen(1, control(), C, 21.0)]
    trials.append(frozen(2, control(1), F))
    again = decide(trials, config)
    assert again.kind == "control" and again.repeat == 1
    trials += [frozen(3, again, F), frozen(4, again, F)]
    state = SearchState.from_trials(trials, config)
    assert state.phase == "failed" and "control repeat 1 failed 3 times" in state.reason


def test_candidates_are_judged_against_the_mean_of_the_repeats(tmp_path: Path) -> None:
    """Controls 20 and 22: the reference is 21, so 20.5 (above the first control alone) is no
    improvement, 21.5 is (the paper's greedy acceptance: any better value)."""
    config = make_config(tmp_path, serial={"n_stuck": 3}, search={"acceptance": "greedy"})
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(), C, 20.0)]
    trials += [frozen(2, control(1), R), frozen(3, serial(1), C, 20.5)]
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 0 and state.stuck == 0  # not judged while 2 runs
    trials[2] = frozen(2, control(1), C, 22.0)
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1 and state.round_best.value == pytest.approx(21.0)
    assert state.stuck == 1
    trials.append(frozen(4, serial(2), C, 21.5))
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 4 and state.stuck == 0


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"acceptance": "best"}, "search.acceptance='best': expected one of noise_aware, greedy"),
        ({"accept_z": -1.0}, r"search.accept_z=-1.0: expected a number ≥ 0"),
    ],
)
def test_bad_acceptance_is_refused(tmp_path: Path, search: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, search=search)


def _round(*candidates: tuple[Decision, TrialState, float | None]) -> list:
    """Seed, controls 20 and 22 (reference 21, σ_trial √2), then ``candidates`` in order."""
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(), C, 20.0)]
    trials.append(frozen(2, control(1), C, 22.0))
    for decision, state, value in candidates:
        trials.append(frozen(len(trials), decision, state, value))
    return trials


def test_a_gain_inside_the_noise_does_not_replace_the_best(config: SearchConfig) -> None:
    """+1.0 over the reference, under 1 × σ_trial (1.41): the greedy rule took it."""
    trials = _round((serial(1), C, 22.0))
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1 and state.stuck == 1
    assert decide(trials, config).repeat is None  # no re-evaluation: a new candidate
    greedy = make_config(config.study.workdir, search={"acceptance": "greedy"})
    assert SearchState.from_trials(trials, greedy).round_best.number == 3


def test_a_would_be_winner_is_re_evaluated_before_it_becomes_the_parent(
    config: SearchConfig,
) -> None:
    trials = _round((serial(1), C, 23.0))  # +2.0 over 21: above 1.41
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1  # not yet the parent
    again = decide(trials, config)
    assert again == serial(1, repeat=1)  # the same network, weights and morphisms
    trials.append(frozen(4, again, R))
    # Candidates train meanwhile; one that finishes is judged after the re-evaluation.
    assert decide(trials, config).kind == "serial"
    trials.append(frozen(5, serial(2), C, 30.0))
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1 and state.stuck == 0
    trials[4] = frozen(4, again, C, 22.6)  # mean 22.8: still +1.8 over 21
    state = SearchState.from_trials(trials, config)
    # Trial 3 became the best (the mean of its values), then trial 5 beat it by 7.2, and its
    # own re-evaluation is next.
    assert state.round_best.number == 3 and state.round_best.value == pytest.approx(22.8)
    assert state.pending == serial(2, repeat=1)
    row = summarize(trials, config, "s")["rounds"][0]
    assert row["candidates"]["count"] == 2 and row["candidates"]["reevaluated"] == 1


def test_a_would_be_winner_that_regresses_is_rejected(config: SearchConfig) -> None:
    trials = _round((serial(1), C, 23.0), (serial(1, repeat=1), C, 21.0))  # mean 22: +1.0
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1 and state.stuck == 1


def test_a_failed_re_evaluation_is_retried_then_rejected(config: SearchConfig) -> None:
    trials = _round((serial(1), C, 23.0), (serial(1, repeat=1), F, None))
    assert decide(trials, config) == serial(1, repeat=1)
    trials += [frozen(5, serial(1, repeat=1), F), frozen(6, serial(1, repeat=1), F)]
    state = SearchState.from_trials(trials, config)
    assert state.round_best.number == 1 and state.stuck == 1
    assert decide(trials, config).repeat is None


def test_a_spent_round_still_re_evaluates_its_would_be_winner(tmp_path: Path) -> None:
    config = make_config(tmp_path, serial={"n_stuck": 3, "max_trials": 1})
    trials = _round((serial(1), C, 23.0))
    assert decide(trials, config) == serial(1, repeat=1)
    trials.append(frozen(4, serial(1, repeat=1), R))
    state = SearchState.from_trials(trials, config)
    assert state.next_kind is None and "re-evaluation trial 4" in state.waiting_for
    trials[4] = frozen(4, serial(1, repeat=1), C, 23.0)
    assert decide(trials, config).kind == "reignite"  # the round ended on its best, trial 3


def test_status_rounds_show_the_noise_against_the_candidates(config: SearchConfig) -> None:
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(), C, 20.0)]
    trials += [frozen(2, control(1), C, 22.0), frozen(3, serial(1), C, 20.5)]
    trials += [frozen(4, serial(2), C, 24.0), frozen(5, serial(3), R)]
    (row,) = summarize(trials, config, "s")["rounds"]
    assert row["round"] == 1
    assert row["noise_sigma"] == pytest.approx(2**0.5)  # stdev(20, 22)
    assert row["control"] == {"values": [20.0, 22.0], "mean": pytest.approx(21.0)}
    candidates = row["candidates"]
    assert candidates["count"] == 2 and candidates["trials"] == 3
    assert candidates["std"] == pytest.approx(3.5 / 2**0.5)  # stdev(20.5, 24)
    assert candidates["best"] == 24.0
    assert candidates["best_gain_in_sigma"] == pytest.approx(3.0 / 2**0.5)


def test_one_noise_repeat_measures_no_noise(tmp_path: Path) -> None:
    config = make_config(tmp_path, search={"noise_repeats": 1})
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(), C, 20.0)]
    assert decide(trials, config).kind == "serial"
    trials.append(frozen(2, serial(1), C, 21.0))
    (row,) = summarize(trials, config, "s")["rounds"]
    assert row["noise_sigma"] is None and row["candidates"]["best_gain_in_sigma"] is None


def test_a_search_measures_its_noise_per_round(
    search_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole search in process (FakeEngine, whose AP moves with the training seed): every
    round's controls train with seeds 0 and 1 and show σ_trial in the status and on the
    control trials (a user attribute optuna-dashboard lists)."""
    config = make_config(tmp_path, "noisy", search_assets, verify={"enabled": False})
    create_search_study(config)
    state = run_worker(
        config.study.name,
        config.study.storage,
        objective=Objective(config, engine=FakeEngine(sleep=0.0, noise=2.0)),
    )
    assert state.phase == "done"
    study, _ = load_search_study(config.study.name, config.study.storage)
    controls = [t for t in study.get_trials() if Decision.of(t).kind == "control"]
    # Two serial rounds and the parallel phase, two seeds each.
    assert len(controls) == 6
    assert sorted(t.user_attrs["seed"] for t in controls) == [0, 0, 0, 1, 1, 1]
    sigmas = {t.user_attrs["noise_sigma"] for t in controls if Decision.of(t).repeat == 1}
    assert None not in sigmas and all(s > 0 for s in sigmas)
    # Every round best that is a candidate was re-evaluated with seed 1 before it won.
    trials = study.get_trials()
    again = {Decision.of(t).candidate: t for t in trials if Decision.of(t).repeat and t.value}
    won = 0
    for best in (*state.round_bests.values(), state.best_parallel):
        decision = Decision.of(trials[best.number])
        if decision.kind in ("serial", "parallel"):
            won += 1
            assert again[decision.candidate].user_attrs["seed"] == 1
            mean = (trials[best.number].value + again[decision.candidate].value) / 2
            assert best.value == pytest.approx(mean)
    assert won >= 1  # the rounds' candidates differ by up to 10 AP: some win

    argv = ["status", "--study", config.study.name, "--storage", config.study.storage]
    assert spnas.cli.main([*argv, "--json"]) == 0
    rounds = json.loads(capsys.readouterr().out)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, "parallel"]
    for row in rounds:
        values = row["control"]["values"]
        assert len(values) == 2 and values[0] != values[1]
        assert row["noise_sigma"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
        assert row["candidates"]["trials"] >= 1
    assert spnas.cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"round 1: noise σ {rounds[0]['noise_sigma']:.2f} (2 control repeat(s))" in text


def test_a_would_be_winner_keeps_its_weights_until_it_is_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_top_k 1: trial 3 (40, re-evaluated 30: the round's best at 35) is the top value;
    trial 5 (37.5, +2.5 over 35) waits for its re-evaluation and may become the parent, so its
    weights stay; trial 6 (a loser) is deleted."""
    import optuna

    import spnas.search._objective as objective_module

    config = make_config(tmp_path, serial={"n_stuck": 3}, search={"keep_top_k": 1})
    trials = _round((serial(1), C, 40.0), (serial(1, repeat=1), C, 30.0), (serial(2), C, 37.5))
    trials.append(frozen(len(trials), serial(3), C, 20.0))
    assert SearchState.from_trials(trials, config).pending == serial(2, repeat=1)
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(
            optuna.trial.create_trial(
                value=trial.value,
                system_attrs=trial.system_attrs,
                user_attrs={WEIGHTS_ATTR: f"w{trial.number}"},
            )
        )
    removed: list[int] = []
    monkeypatch.setattr(
        objective_module,
        "remove_weights",
        lambda study, stale, store: removed.extend(t.number for t, _ in stale),
    )
    Objective(config, engine=FakeEngine()).prune_weights(study, keep=set())
    assert 5 in set(range(len(trials))) - set(removed)  # the would-be winner
    assert 6 in removed and 3 not in removed  # a loser; the round's best
