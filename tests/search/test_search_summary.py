"""The pure summary of a search (spnas.search.summarize): verification's gain over the seed,
its verdict, and Kendall τ (docs/design.md, "Verification")."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState
from search_doubles import SEED_ARCH, frozen, make_config

from spnas.arch import ParallelCode, SerialCode
from spnas.search import (
    Decision,
    SearchConfig,
    kendall_tau,
    paired_interval,
    summarize,
    t_quantile,
)

C = TrialState.COMPLETE
SPNET = ("BB(111,d1,d1,d1)", "(1,0,0,0)")


def _decision(kind: str, arch: str, parent: int | None, parallel: str | None = None, **kw):
    return Decision(
        kind,
        arch=SerialCode.parse(arch),
        parallel=None if parallel is None else ParallelCode.parse(parallel),
        parent=parent,
        **kw,
    )


def _search(config: SearchConfig) -> list[FrozenTrial]:
    """Seed 10; round 1: control 20, BB(111,…) 25 and two misses; no reignition
    (n_rounds 0); parallel: seed 30, control 31, (1,0,0,0) 35, two misses. Values are
    percentages; a minimised metric gets ``1 - value / 100`` (the same ranking)."""
    arch = SPNET[0]
    trials = [
        frozen(0, _decision("seed", SEED_ARCH, None, round=0), C, 10.0),
        frozen(1, _decision("control", SEED_ARCH, 0, round=1), C, 20.0),
        frozen(2, _decision("serial", arch, 0, round=1, ops=("expand(s0,after=1)",)), C, 25.0),
        frozen(3, _decision("serial", "BB(11,d11,d1,d1)", 0, round=1), C, 21.0),
        frozen(4, _decision("serial", "BB(11,d1,d11,d1)", 0, round=1), C, 22.0),
        frozen(5, _decision("parallel_seed", arch, 2, "(0,0,0,0)"), C, 30.0),
        frozen(6, _decision("control", arch, 5, "(0,0,0,0)", round=1), C, 31.0),
        frozen(7, _decision("parallel", arch, 5, SPNET[1], round=1), C, 35.0),
        frozen(8, _decision("parallel", arch, 5, "(0,1,0,0)", round=1), C, 30.5),
        frozen(9, _decision("parallel", arch, 5, "(0,0,1,0)", round=1), C, 30.0),
    ]
    if config.direction == "minimize":
        for trial in trials:
            trial.value = 1.0 - trial.value / 100.0
    return trials


def _verified(config: SearchConfig, seed: list[float], rnd: list[float], spnet: list[float]):
    trials = _search(config)
    plan = [("seed", SEED_ARCH, None, 0, seed), ("round 1", SPNET[0], None, 2, rnd)]
    plan.append(("spnet", SPNET[0], SPNET[1], 7, spnet))
    number = len(trials)
    for role, arch, parallel, parent, values in plan:
        for repeat, value in enumerate(values):
            d = _decision("verify", arch, parent, parallel, round=1, role=role, repeat=repeat)
            trials.append(frozen(number, d, C, value))
            number += 1
    return trials


@pytest.fixture
def config(tmp_path: Path) -> SearchConfig:
    # One control per round: the histories below have one (noise: test_search_noise.py).
    return make_config(
        tmp_path,
        serial={"n_rounds": 0},
        verify={"repeats": 3},
        search={"noise_repeats": 1, "acceptance": "greedy"},
    )


def test_no_verification_before_its_trials(config: SearchConfig) -> None:
    summary = summarize(_search(config), config, "s")
    assert summary["phase"] == "verify" and summary["verify"] is None


def test_a_clear_gain_is_reported_with_its_spread(config: SearchConfig) -> None:
    trials = _verified(config, [10.0, 11.0, 12.0], [12.0, 13.0, 14.0], [15.0, 16.5, 18.0])
    verify = summarize(trials, config, "s")["verify"]
    assert verify["complete"] and [n["role"] for n in verify["networks"]] == [
        "seed",
        "round 1",
        "spnet",
    ]
    seed = verify["networks"][0]
    assert seed["search_ap"] == 10.0 and seed["retrained_ap"] == [10.0, 11.0, 12.0]
    assert seed["mean"] == pytest.approx(11.0) and seed["std"] == pytest.approx(1.0)
    gain = verify["gain_over_seed"]
    # Paired by repeat: 5, 5.5, 6.
    assert gain["network"] == "spnet" and gain["n"] == 3
    assert gain["mean"] == pytest.approx(5.5) and gain["std"] == pytest.approx(0.5)
    # mean ± t(0.975, 2) · s / √3 = 5.5 ± 4.3027 · 0.5 / √3.
    assert gain["ci95"] == pytest.approx([4.2579, 6.7421], abs=1e-4)
    assert verify["beats_seed"] is True
    assert (
        "beats the seed at equal training: +5.50 ± 0.50 AP over 3 seeds, "
        "paired 95 % interval [+4.26, +6.74]"
    ) in verify["verdict"]
    # Search values 10, 25, 35 rank as the retrained means 11, 13, 16.5.
    assert verify["kendall_tau"] == pytest.approx(1.0)


def test_no_gain_beyond_the_seeds_spread_is_said_plainly(config: SearchConfig) -> None:
    trials = _verified(config, [10.0, 14.0, 12.0], [12.0, 13.0, 11.0], [12.5, 11.0, 13.5])
    verify = summarize(trials, config, "s")["verify"]
    assert verify["beats_seed"] is False
    assert "does NOT beat the seed at equal training" in verify["verdict"]
    assert "not above zero" in verify["verdict"]


def test_a_gain_above_the_seeds_spread_but_inside_the_noise_does_not_beat_it(
    config: SearchConfig,
) -> None:
    """The old rule (mean gain > σ of the seed's repeats, 0.5 here) said 'beats': the paired
    differences 3, -1, 2 (mean 1.33) have an interval [-3.84, +6.50]."""
    trials = _verified(config, [10.0, 10.5, 11.0], [12.0, 13.0, 14.0], [13.0, 9.5, 13.0])
    verify = summarize(trials, config, "s")["verify"]
    gain = verify["gain_over_seed"]
    assert gain["mean"] == pytest.approx(4 / 3) and gain["mean"] > gain["seed_std"]
    assert gain["ci95"][0] < 0 < gain["ci95"][1]
    assert verify["beats_seed"] is False
    assert "does NOT beat the seed" in verify["verdict"]


def test_a_consistent_gain_below_the_seeds_spread_beats_it(config: SearchConfig) -> None:
    """The old rule said 'does not beat' (mean 1.0 < σ 2 of the seed's repeats); paired by
    seed the gain is 1.0 ± 0.1, its interval [+0.75, +1.25] above zero."""
    trials = _verified(config, [10.0, 14.0, 12.0], [12.0, 13.0, 11.0], [11.0, 15.1, 12.9])
    verify = summarize(trials, config, "s")["verify"]
    gain = verify["gain_over_seed"]
    assert gain["mean"] == pytest.approx(1.0) and gain["mean"] < gain["seed_std"]
    assert gain["ci95"] == pytest.approx([0.7516, 1.2484], abs=1e-4)
    assert verify["beats_seed"] is True
    assert "beats the seed at equal training" in verify["verdict"]
    assert "[+0.75, +1.25]" in verify["verdict"]


def test_one_paired_repeat_has_no_interval(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        serial={"n_rounds": 0},
        verify={"repeats": 1},
        search={"noise_repeats": 1, "acceptance": "greedy"},
    )
    verify = summarize(_verified(config, [10.0], [12.0], [15.0]), config, "s")["verify"]
    assert verify["gain_over_seed"]["ci95"] is None and verify["beats_seed"] is None
    assert "says nothing (set verify.repeats ≥ 3)" in verify["verdict"]


@pytest.mark.parametrize(
    ("df", "quantile"),
    # Student's t 0.975 quantiles (tables): 12.7062, 4.3027, 2.7764, 2.0423, 1.9840.
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (30, 2.0422725), (100, 1.9839715)],
)
def test_t_quantile_matches_the_tables(df: int, quantile: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)


def test_paired_interval_bad_input() -> None:
    assert paired_interval([1.0]) is None
    with pytest.raises(ValueError, match="degrees of freedom 0"):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError, match=r"probability 1\.5"):
        t_quantile(1.5, 3)


def test_minimized_metrics_count_a_drop_as_a_gain(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        serial={"n_rounds": 0},
        verify={"repeats": 2},
        data={"metric": "LAMR"},
        search={"noise_repeats": 1, "acceptance": "greedy"},
    )
    trials = _verified(config, [0.5, 0.6], [0.4, 0.5], [0.2, 0.3])
    gain = summarize(trials, config, "s")["verify"]["gain_over_seed"]
    assert gain["mean"] == pytest.approx(0.3)


def test_running_verification_says_so(config: SearchConfig) -> None:
    trials = _verified(config, [10.0, 11.0, 12.0], [12.0], [])
    verify = summarize(trials, config, "s")["verify"]
    assert not verify["complete"] and verify["verdict"].startswith("verification is running")
    assert verify["networks"][2]["retrained_ap"] == [None, None, None]


@pytest.mark.parametrize(
    ("xs", "ys", "tau"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [40, 30, 20, 10], -1.0),
        ([1, 2, 3], [1, 3, 2], 1 / 3),
        ([1, 1, 2], [1, 2, 3], 2 / 6**0.5),  # τ-b with a tie in x
        ([1, 1], [1, 2], None),
    ],
)
def test_kendall_tau_b(xs: list[float], ys: list[float], tau: float | None) -> None:
    result = kendall_tau(xs, ys)
    assert result == (None if tau is None else pytest.approx(tau))


def test_a_search_that_kept_the_seed_gains_nothing_by_construction(
    config: SearchConfig,
) -> None:
    """No candidate beat its round's control: the search's pick is the seed, verified once
    (a network met twice is retrained once), and its gain is 0, not unknown."""
    trials = [
        frozen(0, _decision("seed", SEED_ARCH, None, round=0), C, 10.0),
        frozen(1, _decision("control", SEED_ARCH, 0, round=1), C, 20.0),
        frozen(2, _decision("serial", SPNET[0], 0, round=1), C, 15.0),
        frozen(3, _decision("serial", "BB(11,d11,d1,d1)", 0, round=1), C, 14.0),
        frozen(4, _decision("serial", "BB(11,d1,d11,d1)", 0, round=1), C, 13.0),
        frozen(5, _decision("parallel_seed", SEED_ARCH, 1, "(0,0,0,0)"), C, 30.0),
        frozen(6, _decision("control", SEED_ARCH, 5, "(0,0,0,0)", round=1), C, 31.0),
        frozen(7, _decision("parallel", SEED_ARCH, 5, "(1,0,0,0)", round=1), C, 25.0),
        frozen(8, _decision("parallel", SEED_ARCH, 5, "(0,1,0,0)", round=1), C, 24.0),
        frozen(9, _decision("parallel", SEED_ARCH, 5, "(0,0,1,0)", round=1), C, 23.0),
    ]
    for repeat, value in enumerate([11.0, 12.0, 13.0]):
        d = _decision("verify", SEED_ARCH, 0, round=1, role="seed", repeat=repeat)
        trials.append(frozen(len(trials), d, C, value))
    summary = summarize(trials, config, "s")
    verify = summary["verify"]
    assert summary["phase"] == "done" and verify["complete"]
    assert [n["role"] for n in verify["networks"]] == ["seed"]
    gain = verify["gain_over_seed"]
    assert gain["same_network"] is True and gain["network"] == "seed"
    assert (gain["mean"], gain["ci95"], gain["n"]) == (0.0, [0.0, 0.0], 3)
    assert gain["seed_std"] == pytest.approx(1.0)
    assert verify["beats_seed"] is False
    assert verify["verdict"].startswith("the search kept the seed BB(11,d1,d1,d1)")
