"""Pruning: a candidate's evaluations reach Optuna's pruner, but the last one never prunes.

Stopping a trial at its last evaluation saves no training and throws its finished value away:
with Optuna's default MedianPruner and trials that evaluate only at their end, a search lost
the values of its candidates that scored under the median of the earlier trials.
"""

from __future__ import annotations

import optuna
import pytest

from spnas.search import OptunaReporter

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def _reporter(prunable: bool = True) -> tuple[optuna.Trial, OptunaReporter]:
    trial = optuna.create_study(pruner=_AlwaysPrune(), direction="maximize").ask()
    return trial, OptunaReporter(trial, "AP", prunable=prunable)


def test_an_evaluation_before_the_end_may_prune() -> None:
    _, reporter = _reporter()
    reporter.progress(50, 150, 1.0)
    with pytest.raises(optuna.TrialPruned, match=r"AP 3\.000 at iteration 50"):
        reporter.evaluation(50, {"AP": 3.0})


def test_the_last_evaluation_never_prunes() -> None:
    trial, reporter = _reporter()
    reporter.progress(150, 150, 1.0)
    reporter.evaluation(150, {"AP": 3.0})  # the pruner says prune: the trial goes on
    assert trial.study.trials[0].intermediate_values == {150: 3.0}


def test_an_evaluation_with_no_progress_known_may_prune() -> None:
    """An engine that reports no progress gives no last iteration: its evaluations are
    judged by the pruner, as before."""
    _, reporter = _reporter()
    with pytest.raises(optuna.TrialPruned):
        reporter.evaluation(150, {"AP": 3.0})


def test_unprunable_kinds_report_and_go_on() -> None:
    trial, reporter = _reporter(prunable=False)
    reporter.progress(50, 150, 1.0)
    reporter.evaluation(50, {"AP": 3.0})
    reporter.evaluation(100, {"AP": float("nan")})  # not a value: not reported
    assert trial.study.trials[0].intermediate_values == {50: 3.0}
