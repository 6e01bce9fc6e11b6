"""Algorithm 1 replayed from trials (docs/design.md §4): ``SearchState.from_trials`` on synthetic
trials, and the proposals (serial morphisms, FLOPs-inverse parallel sampling)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState
from search_doubles import (
    SEED_ARCH,
    ZEROS,
    frozen,
)
from search_doubles import make_config as _make_config
from search_doubles import (
    parallel_decision as parallel,
)
from search_doubles import (
    pseed_decision as pseed,
)
from search_doubles import (
    reignite_decision as reignite,
)
from search_doubles import (
    seed_decision as seed,
)

from spnas.arch import ParallelCode, SerialCode
from spnas.exceptions import ArchError
from spnas.modeling.flops import cost
from spnas.search import (
    Decision,
    SearchConfig,
    SearchExhausted,
    SearchState,
    SPNASSampler,
    propose_parallel,
    propose_serial,
    sample_parallel_code,
)
from spnas.search._proposals import flops_budget, stage_costs

C, R, F, P, W = (
    TrialState.COMPLETE,
    TrialState.RUNNING,
    TrialState.FAIL,
    TrialState.PRUNED,
    TrialState.WAITING,
)


def arch(i: int) -> str:
    """A distinct serial code per ``i`` (the state machine does not check the space)."""
    return f"BB({'1' * (i + 1)},d1,d1,d1)"


def serial(i: int, parent: int, round_: int = 1) -> Decision:
    return Decision("serial", arch=SerialCode.parse(arch(i)), parent=parent, round=round_)


def make_config(root: Path, **sections: dict) -> SearchConfig:
    """The paper's greedy rule without verification: the state machine these tests replay
    (equal training and verification: test_search_equal_training.py)."""
    search = {"comparison": "greedy", "acceptance": "greedy", **sections.pop("search", {})}
    verify = {"enabled": False, **sections.pop("verify", {})}
    return _make_config(root, search=search, verify=verify, **sections)


@pytest.fixture
def config(tmp_path: Path) -> SearchConfig:
    return make_config(tmp_path)  # n_stuck 2, n_rounds 1, parallel n_stuck 2


def replay(trials: Sequence[FrozenTrial], config: SearchConfig) -> SearchState:
    return SearchState.from_trials(list(trials), config)


def next_decision(state: SearchState, number: int) -> Decision:
    """What the sampler would write on trial ``number`` in ``state``."""
    return SPNASSampler(state.config)._decision(state, number)


# --------------------------------------------------------------------------- seed
def test_fresh_study_starts_with_the_seed(config: SearchConfig) -> None:
    state = replay([], config)
    assert (state.phase, state.next_kind, state.round, state.done) == ("seed", "seed", 0, False)
    decision = next_decision(state, 0)
    assert decision == Decision("seed", arch=SerialCode.parse(SEED_ARCH), round=0)


def test_undecided_trials_are_ignored(config: SearchConfig) -> None:
    state = replay([frozen(0, None, R), frozen(1, None, F)], config)
    assert state.next_kind == "seed" and state.records == ()


def test_running_seed_makes_everyone_wait(config: SearchConfig) -> None:
    state = replay([frozen(0, seed(), R)], config)
    assert state.phase == "seed" and state.next_kind is None
    assert "seed trial 0" in state.waiting_for


def test_complete_seed_opens_serial_round_one(config: SearchConfig) -> None:
    state = replay([frozen(0, seed(), C, 10.0)], config)
    assert (state.phase, state.round, state.next_kind) == ("serial", 1, "serial")
    assert state.parent.number == 0 and state.round_best.number == 0
    assert state.best_serial.value == 10.0 and state.round_baselines == {1: 0}
    decision = next_decision(state, 1)
    assert decision.kind == "serial" and decision.parent == 0 and decision.round == 1
    assert decision.ops and decision.arch != SerialCode.parse(SEED_ARCH)


# --------------------------------------------------------------------------- serial rounds
def test_stuck_counts_in_finish_order_not_trial_order(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 9.0, finished=50),  # finished last: stuck 2
        frozen(2, serial(2, 0), C, 12.0, finished=30),  # finished first: improves
        frozen(3, serial(3, 2), C, 8.0, finished=40),  # stuck 1
    ]
    state = replay(trials, config)
    # In trial-number order it would be 9 (stuck 1), 12 (reset), 8 (stuck 1): not stuck.
    assert state.stuck == 2
    assert state.next_kind == "reignite" and state.parent.number == 2


def test_improvement_resets_stuck(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 9.0),
        frozen(2, serial(2, 0), C, 11.0),
        frozen(3, serial(3, 2), C, 10.5),
    ]
    state = replay(trials, config)
    assert (state.phase, state.next_kind, state.stuck) == ("serial", "serial", 1)
    assert state.parent.number == 2 and state.round_best.value == 11.0
    assert next_decision(state, 4).parent == 2


def test_pruned_and_failed_trials_are_no_improvement(config: SearchConfig) -> None:
    trials = [frozen(0, seed(), C, 10.0), frozen(1, serial(1, 0), P), frozen(2, serial(2, 0), F)]
    state = replay(trials, config)
    assert state.stuck == 2 and state.next_kind == "reignite"


def test_stuck_round_waits_for_its_running_trials(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 9.0),
        frozen(2, serial(2, 0), C, 8.0),
        frozen(3, serial(3, 0), R),
    ]
    state = replay(trials, config)
    assert state.phase == "serial" and state.stuck == 2 and state.next_kind is None
    assert "running serial trial" in state.waiting_for and "round 1" in state.waiting_for
    # A running trial that improves when it finishes keeps the round going.
    trials[3] = frozen(3, serial(3, 0), C, 11.0, finished=10)
    state = replay(trials, config)
    assert state.next_kind == "serial" and state.parent.number == 3 and state.stuck == 0


def test_round_end_reignites_the_round_best(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 12.0),
        frozen(2, serial(2, 1), C, 8.0),
        frozen(3, serial(3, 1), C, 7.0),
    ]
    state = replay(trials, config)
    assert (state.phase, state.round, state.next_kind) == ("serial", 1, "reignite")
    decision = next_decision(state, 4)
    assert decision == reignite(arch(1), 1, 1)
    # While it runs, everyone waits.
    state = replay([*trials, frozen(4, decision, R)], config)
    assert state.next_kind is None and "reignite trial 4 (round 1)" in state.waiting_for


def test_reignition_is_the_next_rounds_baseline(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 12.0),
        frozen(2, serial(2, 1), C, 8.0),
        frozen(3, serial(3, 1), C, 7.0),
        # Worse than the round's best: still the baseline of round 2.
        frozen(4, reignite(arch(1), 1, 1), C, 5.0),
    ]
    state = replay(trials, config)
    assert (state.phase, state.round, state.next_kind) == ("serial", 2, "serial")
    assert state.round_baselines == {1: 0, 2: 4}
    assert state.parent.number == 4 and state.stuck == 0
    assert state.best_serial.number == 1  # the best of any round is kept apart
    # 6 beats the baseline 5 although it is below round 1's best.
    state = replay([*trials, frozen(5, serial(5, 4, round_=2), C, 6.0)], config)
    assert state.round_best.number == 5 and state.stuck == 0


def _two_rounds() -> list[FrozenTrial]:
    """Seed, round 1 stuck, reignition, round 2 (best: trial 5) stuck."""
    return [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 12.0),
        frozen(2, serial(2, 1), C, 8.0),
        frozen(3, serial(3, 1), C, 7.0),
        frozen(4, reignite(arch(1), 1, 1), C, 13.0),
        frozen(5, serial(5, 4, round_=2), C, 14.0),
        frozen(6, serial(6, 5, round_=2), C, 1.0),
        frozen(7, serial(7, 5, round_=2), P),
    ]


def test_last_round_stuck_starts_the_parallel_phase(config: SearchConfig) -> None:
    trials = _two_rounds()
    # Round 1's best was better than round 2's: the parallel phase still builds on round 2's.
    trials[1] = frozen(1, serial(1, 0), C, 20.0)
    state = replay(trials, config)
    assert (state.phase, state.round, state.next_kind) == ("parallel", 2, "parallel_seed")
    assert state.parent.number == 5 and state.best_serial.number == 1
    decision = next_decision(state, 8)
    assert decision == pseed(arch(5), 5)
    state = replay([*trials, frozen(8, decision, R)], config)
    assert state.next_kind is None and "parallel_seed trial 8" in state.waiting_for


def test_parallel_phase_until_stuck_then_done(config: SearchConfig) -> None:
    trials = [*_two_rounds(), frozen(8, pseed(arch(5), 5), C, 30.0)]
    state = replay(trials, config)
    assert (state.phase, state.next_kind) == ("parallel", "parallel")
    assert state.parent.number == 8 and state.best_parallel.number == 8
    trials += [
        frozen(9, parallel(arch(5), "(1,0,0,0)", 8), C, 31.0),
        frozen(10, parallel(arch(5), "(2,0,0,0)", 9), C, 29.0),
    ]
    state = replay(trials, config)
    assert (state.phase, state.stuck, state.parent.number) == ("parallel", 1, 9)
    trials.append(frozen(11, parallel(arch(5), "(0,1,0,0)", 9), R))
    state = replay(trials, config)
    assert state.next_kind == "parallel"  # not stuck yet: keeps proposing
    trials[-1] = frozen(11, parallel(arch(5), "(0,1,0,0)", 9), F)
    state = replay(trials, config)
    assert state.phase == "done" and state.done and state.next_kind is None
    assert state.best_parallel.number == 9 and state.parent.number == 9


def test_final_barrier_when_enabled(tmp_path: Path) -> None:
    config = make_config(tmp_path, final={"enabled": True})
    trials = [
        *_two_rounds(),
        frozen(8, pseed(arch(5), 5), C, 30.0),
        frozen(9, parallel(arch(5), "(1,0,0,0)", 8), C, 31.0),
        frozen(10, parallel(arch(5), "(2,0,0,0)", 9), C, 29.0),
        frozen(11, parallel(arch(5), "(0,1,0,0)", 9), C, 28.0),
    ]
    state = replay(trials, config)
    assert (state.phase, state.next_kind) == ("final", "final")
    decision = next_decision(state, 12)
    assert decision.kind == "final" and decision.parent == 9
    assert str(decision.parallel) == "(1,0,0,0)"
    assert not replay([*trials, frozen(12, decision, R)], config).done
    state = replay([*trials, frozen(12, decision, C, 40.0)], config)
    assert state.phase == "done"


# --------------------------------------------------------------------------- failures
def test_failed_barrier_is_retried_then_the_search_fails(config: SearchConfig) -> None:
    limit = config.search.max_barrier_attempts
    trials = [frozen(i, seed(), F) for i in range(limit - 1)]
    state = replay(trials, config)
    assert state.next_kind == "seed" and state.phase == "seed"
    trials.append(frozen(limit - 1, seed(), F))
    state = replay(trials, config)
    assert state.phase == "failed" and state.done and state.next_kind is None
    assert f"seed failed {limit} times" in state.reason


def test_failed_reignition_is_retried(config: SearchConfig) -> None:
    trials = [*_two_rounds()[:4], frozen(4, reignite(arch(1), 1, 1), F)]
    state = replay(trials, config)
    assert state.next_kind == "reignite" and state.round == 1
    trials += [frozen(5, reignite(arch(1), 1, 1), F), frozen(6, reignite(arch(1), 1, 1), F)]
    state = replay(trials, config)
    assert state.phase == "failed" and "reignite failed 3 times" in state.reason


def test_retried_failure_is_superseded_by_its_retry(config: SearchConfig) -> None:
    # Trial 0 died (stale), its retry 1 is queued: the seed counts as running.
    trials = [frozen(0, seed(), F), frozen(1, seed(), W, retry_of=[0])]
    state = replay(trials, config)
    assert [r.number for r in state.records] == [1]
    assert state.next_kind is None and "seed trial 1" in state.waiting_for
    # Both retries died too: one failed attempt counts (trial 2), not three.
    trials = [
        frozen(0, seed(), F),
        frozen(1, seed(), F, retry_of=[0]),
        frozen(2, seed(), F, retry_of=[0, 1]),
    ]
    state = replay(trials, config)
    assert [r.number for r in state.records] == [2] and state.next_kind == "seed"
    # A superseded serial failure is no step towards stuck.
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), F),
        frozen(2, serial(2, 0), C, 9.0),
        frozen(3, serial(1, 0), R, retry_of=[1]),
    ]
    state = replay(trials, config)
    assert state.stuck == 1 and state.next_kind == "serial"


def test_exhausted_ends_the_round_and_the_phase(config: SearchConfig) -> None:
    exhausted = Decision("exhausted", arch=SerialCode.parse(SEED_ARCH), round=1)
    trials = [frozen(0, seed(), C, 10.0), frozen(1, exhausted, P)]
    state = replay(trials, config)
    assert state.next_kind == "reignite" and state.stuck == 0
    trials = [*_two_rounds(), frozen(8, pseed(arch(5), 5), C, 30.0)]
    exhausted = Decision(
        "exhausted", arch=SerialCode.parse(arch(5)), parallel=ParallelCode.parse(ZEROS), round=2
    )
    state = replay([*trials, frozen(9, exhausted, P)], config)
    assert state.phase == "done"


def test_serial_max_trials_is_a_budget_per_round(tmp_path: Path) -> None:
    config = make_config(tmp_path, serial={"n_stuck": 10, "max_trials": 3})
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, serial(1, 0), C, 11.0),
        frozen(2, serial(2, 1), C, 12.0),
        frozen(3, serial(3, 2), R),
    ]
    state = replay(trials, config)
    assert state.next_kind is None and "round 1" in state.waiting_for
    trials[3] = frozen(3, serial(3, 2), C, 13.0)
    assert replay(trials, config).next_kind == "reignite"


def test_minimize_reverses_every_comparison(tmp_path: Path) -> None:
    config = make_config(tmp_path, data={"metric": "LAMR"})
    assert config.direction == "minimize"
    trials = [
        frozen(0, seed(), C, 0.5),
        frozen(1, serial(1, 0), C, 0.6),  # worse
        frozen(2, serial(2, 0), C, 0.4),  # better: resets
        frozen(3, serial(3, 2), C, 0.45),  # worse
    ]
    state = replay(trials, config)
    assert state.parent.number == 2 and state.stuck == 1 and state.next_kind == "serial"
    trials.append(frozen(4, serial(4, 2), C, 0.9))
    state = replay(trials, config)
    assert state.next_kind == "reignite" and state.parent.number == 2
    # The same values under AP (maximize) give another history.
    state = replay(trials, make_config(tmp_path))
    assert state.round_best.number == 4 and state.next_kind == "serial"


# --------------------------------------------------------------------------- proposals
def test_propose_serial_stays_in_the_space_and_never_repeats(tmp_path: Path) -> None:
    config = make_config(tmp_path, serial={"n_stuck": 1000})
    trials = [frozen(0, seed(), C, 10.0)]
    seen = {SEED_ARCH}
    for number in range(1, 41):
        state = replay(trials, config)
        decision = propose_serial(state, random.Random(number))
        code = decision.arch
        assert config.space.contains(code), f"{code} is outside the space"
        assert str(code) not in seen, f"{code} proposed twice"
        assert decision.parent == 0 and decision.round == 1
        assert len(decision.ops) == config.serial.n_mutations
        seen.add(str(code))
        # Running and failed candidates are taken too.
        state_ = (R, F, P, C)[number % 4]
        trials.append(frozen(number, decision, state_, 1.0 if state_ == C else None))


def test_propose_serial_only_in_a_serial_state(config: SearchConfig) -> None:
    with pytest.raises(ArchError, match="no serial proposal"):
        propose_serial(replay([], config), random.Random(0))


def test_propose_serial_exhausts_a_tiny_space(tmp_path: Path) -> None:
    # 8 blocks in exactly 4 stages: only swaps are possible, and there are few children.
    config = make_config(
        tmp_path,
        space={"max_blocks": 8, "max_stages": 4},
        serial={"n_stuck": 1000, "n_mutations": 1},
    )
    trials = [frozen(0, seed(), C, 10.0)]
    for number in range(1, 100):
        state = replay(trials, config)
        try:
            decision = propose_serial(state, random.Random(number))
        except SearchExhausted:
            break
        trials.append(frozen(number, decision, C, 1.0))
    else:
        pytest.fail("a space of a handful of codes never ran out")
    # The sampler turns that into an 'exhausted' trial, which ends the round.
    decision = next_decision(replay(trials, config), len(trials))
    assert decision.kind == "exhausted" and decision.round == 1
    state = replay([*trials, frozen(len(trials), decision, P)], config)
    assert state.next_kind == "reignite"


def _parallel_state(config: SearchConfig, extra: Sequence[FrozenTrial] = ()) -> SearchState:
    trials = [*_two_rounds(), frozen(8, pseed(SEED_ARCH, 5), C, 30.0), *extra]
    # Round 2's best (trial 5) has the seed's layout here, so the costs below are ResNet-18's.
    trials[5] = frozen(5, Decision("serial", SerialCode.parse(SEED_ARCH), round=2, parent=4), C, 14)
    state = replay(trials, config)
    assert state.next_kind == "parallel"
    return state


@pytest.mark.parametrize("budget", [{"budget_ratio": 1.6}, {"budget_gmacs": "absolute"}])
def test_propose_parallel_respects_the_flops_budget(tmp_path: Path, budget: dict) -> None:
    base = make_config(tmp_path)
    serial_gmacs = cost(SEED_ARCH, base_width=8, input_size=(base.schedule.min_size,) * 2).gmacs
    if budget.get("budget_gmacs") == "absolute":
        budget = {"budget_gmacs": 1.5 * serial_gmacs, "budget_ratio": None}
    config = make_config(tmp_path, parallel={"n_stuck": 1000, **budget})
    limit = flops_budget(config, SerialCode.parse(SEED_ARCH))
    assert limit == pytest.approx(serial_gmacs * (budget.get("budget_ratio") or 1.5))
    extra: list[FrozenTrial] = []
    codes = set()
    # About 20 of the 81 codes of (0..2)^4 fit: 8 proposals, all new, all within budget.
    for number in range(9, 17):
        state = _parallel_state(config, extra)
        decision = propose_parallel(state, random.Random(number))
        gmacs = cost(decision.arch, decision.parallel, base_width=8, input_size=(64, 64)).gmacs
        assert gmacs <= limit + 1e-9, f"{decision.parallel}: {gmacs} > {limit}"
        assert max(decision.parallel.subnets) <= config.space.max_subnets
        assert decision.parallel.total >= 1 and str(decision.parallel) not in codes
        assert decision.parent == 8 and str(decision.arch) == SEED_ARCH
        codes.add(str(decision.parallel))
        extra.append(frozen(number, decision, C, 1.0))


def test_propose_parallel_exhausted_under_a_tight_budget(tmp_path: Path) -> None:
    config = make_config(tmp_path, parallel={"budget_ratio": 1.0, "max_tries": 50})
    with pytest.raises(SearchExhausted, match="over budget"):
        propose_parallel(_parallel_state(config), random.Random(0))


def test_parallel_sampling_prefers_cheap_stages() -> None:
    two_stages = SerialCode.parse("BB(11,d11)")
    rng = random.Random(0)
    totals = [0, 0]
    early = [0, 0]  # draws of at most 3 subnets: the cheap stage cannot be full yet
    for _ in range(2000):
        code = sample_parallel_code(two_stages, (1.0, 10.0), 3, rng)
        assert code.total >= 1 and max(code.subnets) <= 3
        for stage in (0, 1):
            totals[stage] += code[stage]
            if code.total <= 3:
                early[stage] += code[stage]
    # Each subnet goes to the cheap stage with probability 10/11 while it has room.
    assert early[0] >= 3 * early[1], early
    # Overall the cheap stage fills first, so the expensive one gets the surplus only.
    assert totals[0] >= 1.5 * totals[1], totals


def test_stage_costs_grow_with_the_stage_layout(config: SearchConfig) -> None:
    costs = stage_costs(config, SerialCode.parse(SEED_ARCH))
    assert len(costs) == 4 and all(c > 0 for c in costs)


def test_a_decision_is_two_attributes_and_older_studies_still_read() -> None:
    """``spnas:decision`` (the fields) and ``spnas:kind`` (the mark): two storage round trips
    a decision instead of seven; studies written one attribute per field still read."""
    decision = Decision(
        "verify", SerialCode.parse("BB(11,d1,d1,d1)"), None, 3, ("expand",), 2, "seed", 1
    )
    attrs = decision.to_attrs()
    assert list(attrs) == ["spnas:decision", "spnas:kind"]
    assert Decision.from_attrs(attrs) == decision
    legacy = {f"spnas:{name}": value for name, value in attrs["spnas:decision"].items()}
    assert Decision.from_attrs({**legacy, "spnas:kind": "verify"}) == decision
    assert Decision.from_attrs(attrs["spnas:decision"]) is None  # no mark: not decided
