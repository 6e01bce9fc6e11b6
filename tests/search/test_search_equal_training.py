"""Equal training and verification replayed from trials (docs/design.md, "Equal training" and
"Verification"): control trials, candidates started from the round's baseline, and the
``verify`` phase; the paper's greedy rule is test_search_state_machine.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState
from search_doubles import (
    SEED_ARCH,
    ZEROS,
    frozen,
    make_config,
)
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
from spnas.morphism import apply_all, parse_ops
from spnas.search import Decision, SearchConfig, SearchState, SPNASSampler

C, R, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL


def arch(i: int) -> str:
    """A distinct serial code per ``i``, none the seed's (the replay does not check the space)."""
    return f"BB({'1' * (i + 2)},d1,d1,d1)"


def control(arch_text: str, parent: int, round_: int, parallel: str | None = None) -> Decision:
    return Decision(
        "control",
        arch=SerialCode.parse(arch_text),
        parallel=None if parallel is None else ParallelCode.parse(parallel),
        parent=parent,
        round=round_,
    )


def serial(i: int, parent: int, round_: int = 1, ops: tuple[str, ...] = ()) -> Decision:
    return Decision("serial", arch=SerialCode.parse(arch(i)), parent=parent, round=round_, ops=ops)


@pytest.fixture
def config(tmp_path: Path) -> SearchConfig:
    # n_stuck 2, one reignition, parallel n_stuck 2; equal training and verification are the
    # defaults. One control per round: these histories test the control's mechanics; its noise
    # repeats are tested in test_search_noise.py.
    return make_config(
        tmp_path, verify={"repeats": 2}, search={"noise_repeats": 1, "acceptance": "greedy"}
    )


def replay(trials: Sequence[FrozenTrial], config: SearchConfig) -> SearchState:
    return SearchState.from_trials(list(trials), config)


def next_decision(state: SearchState, number: int) -> Decision:
    return SPNASSampler(state.config)._decision(state, number)


def test_defaults_are_equal_training_with_verification(config: SearchConfig) -> None:
    assert config.search.comparison == "equal_training"
    assert config.verify.enabled and config.verify.repeats == 2


def test_each_round_opens_with_a_control_of_its_baseline(config: SearchConfig) -> None:
    state = replay([frozen(0, seed(), C, 10.0)], config)
    assert (state.phase, state.round, state.next_kind) == ("serial", 1, "control")
    decision = next_decision(state, 1)
    assert decision == control(SEED_ARCH, 0, 1)


def test_candidates_train_beside_the_control_from_the_baseline(config: SearchConfig) -> None:
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(SEED_ARCH, 0, 1), R)]
    state = replay(trials, config)
    assert state.next_kind == "serial" and state.init_from.number == 0
    decision = next_decision(state, 2)
    assert decision.kind == "serial" and decision.parent == 0
    # Its morphisms lead from the baseline's architecture to its own.
    assert apply_all(SEED_ARCH, parse_ops("; ".join(decision.ops))) == decision.arch


def test_nothing_is_judged_before_the_control_finished(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, control(SEED_ARCH, 0, 1), R),
        frozen(2, serial(1, 0), C, 5.0),
        frozen(3, serial(2, 0), C, 6.0),
        frozen(4, serial(3, 0), C, 7.0),
    ]
    state = replay(trials, config)
    # Three worse candidates but the round is not stuck: their reference is not known yet.
    assert state.phase == "serial" and state.stuck == 0 and state.next_kind == "serial"


def test_a_candidate_must_beat_the_control_not_the_baseline(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, control(SEED_ARCH, 0, 1), C, 20.0, finished=5),
        # Beats the baseline's 10 but only because it trained as long as the control.
        frozen(2, serial(1, 0), C, 15.0, finished=3),
    ]
    state = replay(trials, config)
    assert state.round_best.number == 1 and state.stuck == 1
    # The round's best is the control: proposals mutate its (the seed's) architecture and
    # start from the baseline's weights with no morphism before theirs.
    decision = next_decision(state, 3)
    assert decision.parent == 0
    trials.append(frozen(3, serial(2, 0), C, 12.0, finished=6))
    state = replay(trials, config)
    assert (state.next_kind, state.stuck) == ("reignite", 2)
    assert next_decision(state, 4) == reignite(SEED_ARCH, 1, 1)


def test_improvements_chain_morphisms_from_the_baseline(config: SearchConfig) -> None:
    trials = [
        frozen(0, seed(), C, 10.0),
        frozen(1, control(SEED_ARCH, 0, 1), C, 20.0),
        # BB(111,d1,d1,d1) = arch(1), one expand away from the seed.
        frozen(2, serial(1, 0, ops=("expand(s0,after=1)",)), C, 25.0),
    ]
    assert apply_all(SEED_ARCH, parse_ops("expand(s0,after=1)")) == SerialCode.parse(arch(1))
    state = replay(trials, config)
    assert state.round_best.number == 2 and state.stuck == 0
    decision = next_decision(state, 3)
    # From the baseline's weights, through the best child's morphisms, then its own.
    assert decision.parent == 0 and decision.ops[0] == "expand(s0,after=1)"
    assert apply_all(SEED_ARCH, parse_ops("; ".join(decision.ops))) == decision.arch


def test_failed_control_is_decided_again_then_fails_the_search(config: SearchConfig) -> None:
    trials = [frozen(0, seed(), C, 10.0), frozen(1, control(SEED_ARCH, 0, 1), F)]
    assert replay(trials, config).next_kind == "control"
    trials += [frozen(2, control(SEED_ARCH, 0, 1), F), frozen(3, control(SEED_ARCH, 0, 1), F)]
    state = replay(trials, config)
    assert state.phase == "failed" and "control failed 3 times" in state.reason


def _serial_rounds() -> list[FrozenTrial]:
    """Seed, round 1 (control, an improvement, two misses), reignite, round 2 (stuck)."""
    return [
        frozen(0, seed(), C, 10.0),
        frozen(1, control(SEED_ARCH, 0, 1), C, 20.0),
        frozen(2, serial(1, 0), C, 25.0),
        frozen(3, serial(2, 0), C, 21.0),
        frozen(4, serial(3, 0), C, 22.0),
        frozen(5, reignite(arch(1), 2, 1), C, 27.0),
        frozen(6, control(arch(1), 5, 2), C, 30.0),
        frozen(7, serial(4, 5, round_=2), C, 29.0),
        frozen(8, serial(5, 5, round_=2), C, 28.0),
    ]


def test_round_two_controls_the_reignition(config: SearchConfig) -> None:
    trials = _serial_rounds()[:6]
    state = replay(trials, config)
    assert (state.round, state.next_kind) == (2, "control")
    assert next_decision(state, 6) == control(arch(1), 5, 2)


def test_parallel_phase_controls_the_parallel_seed(config: SearchConfig) -> None:
    trials = _serial_rounds()
    state = replay(trials, config)
    # Round 2's best is its control (the reignited network trained once more).
    assert state.next_kind == "parallel_seed" and state.parent.number == 6
    assert state.round_bests[1].number == 2 and state.round_bests[2].number == 6
    trials.append(frozen(9, pseed(arch(1), 6), C, 31.0))
    state = replay(trials, config)
    assert state.next_kind == "control"
    assert next_decision(state, 10) == control(arch(1), 9, 2, ZEROS)
    trials.append(frozen(10, control(arch(1), 9, 2, ZEROS), R))
    decision = next_decision(replay(trials, config), 11)
    assert decision.kind == "parallel" and decision.parent == 9


def _through_parallel() -> list[FrozenTrial]:
    return [
        *_serial_rounds(),
        frozen(9, pseed(arch(1), 6), C, 31.0),
        frozen(10, control(arch(1), 9, 2, ZEROS), C, 33.0),
        frozen(11, parallel(arch(1), "(1,0,0,0)", 9), C, 35.0),
        frozen(12, parallel(arch(1), "(0,1,0,0)", 9), C, 32.0),
        frozen(13, parallel(arch(1), "(0,0,1,0)", 9), C, 34.0),
    ]


def test_verification_retrains_seed_round_bests_and_spnet(config: SearchConfig) -> None:
    trials = _through_parallel()
    state = replay(trials, config)
    assert (state.phase, state.next_kind) == ("verify", "verify")
    assert state.best_parallel.number == 11
    planned = []
    number = 14
    while state.next_kind == "verify":
        decision = next_decision(state, number)
        planned.append((decision.role, str(decision.arch), decision.parallel, decision.repeat))
        trials.append(frozen(number, decision, R))
        number += 1
        state = replay(trials, config)
    # Round 2's best is round 1's architecture (its reignition's control): retrained once.
    assert planned == [
        ("seed", SEED_ARCH, None, 0),
        ("seed", SEED_ARCH, None, 1),
        ("round 1", arch(1), None, 0),
        ("round 1", arch(1), None, 1),
        ("spnet", arch(1), ParallelCode.parse("(1,0,0,0)"), 0),
        ("spnet", arch(1), ParallelCode.parse("(1,0,0,0)"), 1),
    ]
    assert state.next_kind is None and "6 running verification" in state.waiting_for


def test_failed_verification_is_retried_then_left_out(config: SearchConfig) -> None:
    trials = _through_parallel()
    state = replay(trials, config)
    first = next_decision(state, 14)
    trials.append(frozen(14, first, F))
    assert next_decision(replay(trials, config), 15) == first  # decided again
    trials += [frozen(15, first, F), frozen(16, first, F)]
    number = 17
    state = replay(trials, config)
    while state.next_kind == "verify":
        decision = next_decision(state, number)
        assert decision != first
        trials.append(frozen(number, decision, C, 20.0))
        number += 1
        state = replay(trials, config)
    assert state.phase == "done" and state.done


def test_verification_off_ends_with_the_parallel_phase(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, verify={"enabled": False}, search={"noise_repeats": 1, "acceptance": "greedy"}
    )
    assert replay(_through_parallel(), config).phase == "done"


def test_unknown_comparison_is_refused(tmp_path: Path) -> None:
    from spnas.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"search.comparison='best'.*equal_training, greedy"):
        make_config(tmp_path, search={"comparison": "best"})
