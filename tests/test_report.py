"""Search figures and trial notes built from a hand-made history."""

from __future__ import annotations

import optuna
import pytest

from spnas.report import ap_vs_gmacs_figure, stage_flops_figure, trajectory_figure
from spnas.search import Decision, SearchConfig, trial_note

SEED = "BB(11,d1,d1,d1)"
CHILD = "BB(11,d11,d1,d1)"


@pytest.fixture()
def config() -> SearchConfig:
    return SearchConfig.from_dict(
        {
            "study": {"name": "figures"},
            "model": {"seed_arch": SEED, "width": 8},
            "schedule": {"iters": 1, "min_size": 64},
        }
    )


def trial(number: int, decision: Decision, value: float, gmacs: float) -> optuna.trial.FrozenTrial:
    frozen = optuna.trial.create_trial(
        value=value,
        system_attrs=decision.to_attrs(),
        user_attrs={"gmacs": gmacs, "AP": value, "params_m": 1.0},
    )
    frozen.number = number
    return frozen


@pytest.fixture()
def history() -> list[optuna.trial.FrozenTrial]:
    return [
        trial(0, Decision("seed", arch=SEED), 2.0, 0.10),
        trial(
            1,
            Decision("serial", arch=CHILD, parent=0, ops=("expand(s1,after=0)",), round=1),
            5.0,
            0.12,
        ),
        trial(2, Decision("serial", arch="BB(11,d1,d11,d1)", parent=0, round=1), 3.0, 0.12),
    ]


def test_trajectory_has_kinds_and_a_monotone_best(history, config) -> None:
    figure = trajectory_figure(history, config)
    names = [trace.name for trace in figure.data]
    assert names == ["seed", "serial", "best so far"]
    assert list(figure.data[-1].y) == [2.0, 5.0, 5.0]
    assert figure.layout.yaxis.title.text == "AP"


def test_stage_flops_bars_per_best_network(history, config) -> None:
    figure = stage_flops_figure(history, config)
    assert [trace.name.split(":")[0] for trace in figure.data] == ["seed", "best serial"]
    assert list(figure.data[0].x) == ["stem", "res2", "res3", "res4", "res5"]
    assert all(value > 0 for value in figure.data[0].y)


def test_ap_against_gmacs(history, config) -> None:
    figure = ap_vs_gmacs_figure(history, config)
    serial = next(trace for trace in figure.data if trace.name == "serial")
    assert list(serial.x) == [0.12, 0.12] and list(serial.y) == [5.0, 3.0]


def test_trial_note_names_what_was_trained() -> None:
    decision = Decision("serial", arch=CHILD, parent=0, ops=("expand(s1,after=0)",), round=1)
    note = trial_note(decision, {"AP": 5.0, "gmacs": 0.12, "inherited_fraction": 0.97}, 5.0)
    assert "`BB(11,d11,d1,d1)`" in note and "trial 0" in note and "`expand(s1,after=0)`" in note
    assert "97.0%" in note and "5.00" in note
