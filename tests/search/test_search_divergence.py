"""A diverged training is a result, not a fault (docs/design.md §4.2, issue 24).

The same network, seed and schedule diverge again when retried, so a trial whose loss went
non-finite is recorded (PRUNED, with ``diverged``, ``diverged_iteration``, ``diverged_loss`` and
``seed``) and never retried: a verification repeat counts as a failed repeat and the verdict
says so, a candidate is no improvement, and a barrier or control fails the search, naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from search_doubles import SEED_ARCH, FakeEngine, frozen, make_config

from spnas.arch import ParallelCode, SerialCode
from spnas.engines import TrialDiverged
from spnas.search import Decision, SearchConfig, SearchState, SPNASSampler, summarize

C, R, F, P = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED
ARCH = "BB(111,d1,d1,d1)"
SPNET = "(1,0,0,0)"


def _decision(kind: str, arch: str, parent: int | None, parallel: str | None = None, **kw: Any):
    return Decision(
        kind,
        arch=SerialCode.parse(arch),
        parallel=None if parallel is None else ParallelCode.parse(parallel),
        parent=parent,
        **kw,
    )


def _search() -> list[FrozenTrial]:
    """Seed 10; round 1: control 20, ARCH 25, two misses (n_rounds 0: no reignition);
    parallel: seed 30, control 31, SPNET 35, two misses. Next: verification."""
    return [
        frozen(0, _decision("seed", SEED_ARCH, None, round=0), C, 10.0),
        frozen(1, _decision("control", SEED_ARCH, 0, round=1), C, 20.0),
        frozen(2, _decision("serial", ARCH, 0, round=1, ops=("expand(s0,after=1)",)), C, 25.0),
        frozen(3, _decision("serial", "BB(11,d11,d1,d1)", 0, round=1), C, 21.0),
        frozen(4, _decision("serial", "BB(11,d1,d11,d1)", 0, round=1), C, 22.0),
        frozen(5, _decision("parallel_seed", ARCH, 2, "(0,0,0,0)"), C, 30.0),
        frozen(6, _decision("control", ARCH, 5, "(0,0,0,0)", round=1), C, 31.0),
        frozen(7, _decision("parallel", ARCH, 5, SPNET, round=1), C, 35.0),
        frozen(8, _decision("parallel", ARCH, 5, "(0,1,0,0)", round=1), C, 30.5),
        frozen(9, _decision("parallel", ARCH, 5, "(0,0,1,0)", round=1), C, 30.0),
    ]


def diverged(trial: FrozenTrial, iteration: int = 33, seed: int = 0) -> FrozenTrial:
    """``trial`` as the objective leaves a diverged one: PRUNED, where it diverged."""
    trial.user_attrs = {
        "diverged": True,
        "diverged_iteration": iteration,
        "diverged_loss": math.nan,
        "seed": seed,
    }
    return trial


@pytest.fixture
def config(tmp_path: Path) -> SearchConfig:
    # One control per round: the histories below have one (noise: test_search_noise.py).
    return make_config(
        tmp_path,
        serial={"n_rounds": 0},
        verify={"repeats": 3},
        search={"noise_repeats": 1, "acceptance": "greedy"},
    )


def replay(trials: list[FrozenTrial], config: SearchConfig) -> SearchState:
    return SearchState.from_trials(trials, config)


def verify_all(
    trials: list[FrozenTrial], config: SearchConfig, diverges: set[tuple[str, int]]
) -> list[Decision]:
    """Decide every verification trial; those whose (role, repeat) is in ``diverges``
    diverge at iteration 30 + repeat, the others complete. Returns the decisions made."""
    decisions = []
    state = replay(trials, config)
    while state.next_kind == "verify":
        number = len(trials)
        decision = SPNASSampler(config)._decision(state, number)
        decisions.append(decision)
        if (decision.role, decision.repeat) in diverges:
            trial = frozen(number, decision, P)
            trials.append(diverged(trial, 30 + decision.repeat, decision.repeat))
        else:
            value = {"seed": 10.0, "round 1": 12.0, "spnet": 15.0}[decision.role]
            trials.append(frozen(number, decision, C, value + decision.repeat))
        state = replay(trials, config)
    return decisions


def test_a_diverged_repeat_is_not_retried_and_verification_ends(config: SearchConfig) -> None:
    trials = _search()
    spnet = {("spnet", k) for k in range(3)}
    decisions = verify_all(trials, config, spnet)
    # Each network and repeat decided once: nothing retried for diverging.
    keys = [(d.role, d.repeat) for d in decisions]
    assert len(keys) == len(set(keys)) == 9
    state = replay(trials, config)
    assert state.phase == "done" and state.done and state.reason is None
    verify = summarize(trials, config, "s")["verify"]
    assert verify["complete"]
    row = verify["networks"][-1]
    assert row["role"] == "spnet" and row["mean"] is None
    assert row["retrained_ap"] == [None, None, None]
    assert [(d["repeat"], d["iteration"], d["seed"]) for d in row["diverged"]] == [
        (0, 30, 0),
        (1, 31, 1),
        (2, 32, 2),
    ]
    assert row["diverged"][0]["loss"] is None  # NaN, as JSON allows it: null
    text = verify["verdict"]
    assert "verification is running" not in text
    assert text.startswith(f"no verdict: spnet {ARCH} {SPNET} has no retrained AP")
    assert "(every repeat diverged)" in text
    assert f"3 of 3 repeats of spnet {ARCH} {SPNET}" in text
    assert "seed 0 at iteration 30, seed 1 at iteration 31, seed 2 at iteration 32" in text
    assert "its retrained mean is undefined" in text
    assert verify["gain_over_seed"]["mean"] is None and verify["beats_seed"] is None


def test_a_partly_diverged_network_is_compared_on_its_other_repeats(
    config: SearchConfig,
) -> None:
    trials = _search()
    verify_all(trials, config, {("spnet", 2)})
    assert replay(trials, config).phase == "done"
    verify = summarize(trials, config, "s")["verify"]
    gain = verify["gain_over_seed"]
    assert gain["network"] == "spnet" and gain["n"] == 2  # paired on seeds 0 and 1
    assert gain["mean"] == pytest.approx(5.0)
    text = verify["verdict"]
    assert text.startswith(f"spnet {ARCH} {SPNET} beats the seed at equal training")
    assert "over 2 seeds" in text
    assert f"diverged, counted as failed repeats: 1 of 3 repeats of spnet {ARCH} {SPNET}" in text
    assert "(seed 2 at iteration 32)" in text and "undefined" not in text


def test_a_diverged_seed_fails_the_search_with_its_reason(config: SearchConfig) -> None:
    trials = [diverged(frozen(0, _decision("seed", SEED_ARCH, None, round=0), P))]
    state = replay(trials, config)
    assert state.phase == "failed" and state.next_kind is None
    assert state.reason.startswith(
        f"seed trial 0 ({SEED_ARCH}) diverged at iteration 33 (loss nan, seed 0)"
    )
    assert "schedule.base_lr" in state.reason


def test_a_diverged_control_fails_the_search(config: SearchConfig) -> None:
    trials = _search()[:1]
    trials.append(diverged(frozen(1, _decision("control", SEED_ARCH, 0, round=1), P), 7))
    state = replay(trials, config)
    assert state.phase == "failed" and "control trial 1" in state.reason
    assert "diverged at iteration 7" in state.reason


def test_a_diverged_candidate_is_a_failed_candidate(config: SearchConfig) -> None:
    trials = _search()[:3]
    trials.append(diverged(frozen(3, _decision("serial", "BB(11,d11,d1,d1)", 0, round=1), P)))
    state = replay(trials, config)
    assert state.phase == "serial" and state.next_kind == "serial"
    assert state.stuck == 1 and state.round_best.number == 2


def test_a_failed_verification_without_divergence_is_still_retried(
    config: SearchConfig,
) -> None:
    trials = _search()
    state = replay(trials, config)
    first = SPNASSampler(config)._decision(state, 10)
    trials.append(frozen(10, first, F))
    assert SPNASSampler(config)._decision(replay(trials, config), 11) == first


# --------------------------------------------------------------------------- a real worker
class DivergingEngine(FakeEngine):
    """FakeEngine whose verification retrains of SPNets diverge for some seeds."""

    def __init__(self, seeds: set[int]) -> None:
        super().__init__(sleep=0.0)
        self.seeds = seeds

    def train_eval(
        self, spec, init_weights, schedule, data, reporter=None, out_dir="output", **kwargs
    ):
        retrain = init_weights is not None and init_weights.path.name == "pretrained_backbone.pth"
        if retrain and spec.parallel is not None and schedule.seed in self.seeds:
            self.calls.append(("verify", str(spec.arch), str(spec.parallel)))
            raise TrialDiverged(
                f"training {spec.arch} diverged at iteration 33: loss nan",
                iteration=33,
                loss=math.nan,
                seed=schedule.seed,
            )
        return super().train_eval(spec, init_weights, schedule, data, reporter, out_dir, **kwargs)


def test_a_search_whose_spnet_retrains_diverge_ends_done_with_a_verdict(
    search_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.cli import main
    from spnas.search import Objective, create_search_study, get_decision, run_worker

    config = make_config(tmp_path, "diverging", search_assets, verify={"repeats": 2})
    create_search_study(config)
    engine = DivergingEngine(seeds={0, 1})
    state = run_worker(
        config.study.name, config.study.storage, objective=Objective(config, engine=engine)
    )
    assert state.phase == "done", state.reason
    study = optuna.load_study(study_name=config.study.name, storage=config.study.storage)
    verify = [t for t in study.get_trials() if get_decision(t).kind == "verify"]
    spnet = [t for t in verify if t.user_attrs["parallel"] is not None]
    # One trial per SPNet repeat, both diverged and recorded, none retried.
    assert sorted(t.user_attrs["seed"] for t in spnet) == [0, 1]
    for trial in spnet:
        assert trial.state == P and trial.user_attrs["diverged"] is True
        assert trial.user_attrs["diverged_iteration"] == 33
        assert math.isnan(trial.user_attrs["diverged_loss"])
        # A diverged trial's work is charged too (a search's budget counts it).
        assert trial.user_attrs["cpu_s"] > 0
    assert all(t.state == C for t in verify if t not in spnet)

    assert main(["status", "--study", config.study.name, "--storage", config.study.storage]) == 0
    text = capsys.readouterr().out
    assert "done" in text.splitlines()[0]
    assert "DIVERGED" in text and "div@33 div@33" in text
    assert "no verdict: spnet" in text and "(every repeat diverged)" in text
    assert "2 of 2 repeats of spnet" in text


def test_status_and_resume_of_a_search_whose_seed_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.cli import main
    from spnas.search import CONFIG_ATTR

    url = f"sqlite:///{tmp_path / 'diverged.db'}"
    config = SearchConfig.from_dict({"study": {"name": "diverged"}, "model": {"width": 8}})
    study = optuna.create_study(study_name="diverged", storage=url, direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    seed = Decision("seed", arch=config.seed_arch)
    attrs = {"diverged": True, "diverged_iteration": 17, "diverged_loss": math.inf, "seed": 0}
    study.add_trial(
        optuna.trial.create_trial(state=P, system_attrs=seed.to_attrs(), user_attrs=attrs)
    )
    assert main(["status", "--study", "diverged", "--storage", url]) == 0
    text = capsys.readouterr().out
    assert "phase failed — seed trial 0" in text and "diverged at iteration 17" in text
    assert "seed diverged 1" in text and "DIVERGED" in text
    # Retrying would diverge again: resume says why it does not.
    assert main(["resume", "--study", "diverged", "--storage", url]) == 1
    assert "failed and not resumable: seed trial 0" in capsys.readouterr().out
    assert len(study.get_trials()) == 1


@pytest.mark.parametrize("name", ["smoke", "demo"])
def test_shipped_cpu_studies_clip_gradients(name: str) -> None:
    """Their retrains from crop pretraining diverged without it (docs/benchmarks.md, measured facts)."""
    pytest.importorskip("detectron2")
    from spnas.engines.detectron2.config import get_spnas_cfg

    root = Path(__file__).resolve().parents[2]
    config = SearchConfig.from_yaml(root / "studies" / f"{name}.yaml")
    cfg = get_spnas_cfg(config.engine.config)
    cfg.merge_from_list(list(config.engine.opts))
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED and clip.CLIP_TYPE == "norm" and clip.CLIP_VALUE == 5.0
