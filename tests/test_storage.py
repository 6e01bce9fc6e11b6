"""Storage: claims of a trial on SQLite are atomic.

Optuna reads a trial's state, then writes the new one; PostgreSQL locks the row in between,
SQLite does not. Several processes here take the same queued trials at once, and fail the
same running trials at once: each trial must be taken, and failed, exactly once.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from spnas.storage import make_storage

N_PROCESSES = 4
N_TRIALS = 40


def _claim_all(url: str, trial_ids: list[int], state: TrialState, start: Any, out: Any) -> None:
    storage = make_storage(url)
    start.wait()
    claimed = []
    for trial_id in trial_ids:
        try:
            if storage.set_trial_state_values(trial_id, state):
                claimed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    out.put(claimed)


def _claims(url: str, trial_ids: list[int], state: TrialState) -> list[int]:
    """Every trial id that some process claimed, as often as it was claimed."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(N_PROCESSES), context.Queue()
    procs = [
        context.Process(target=_claim_all, args=(url, trial_ids, state, start, out))
        for _ in range(N_PROCESSES)
    ]
    for proc in procs:
        proc.start()
    claims = [trial_id for _ in procs for trial_id in out.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=60)
    return claims


@pytest.mark.parametrize(
    ("before", "after"),
    [(TrialState.WAITING, TrialState.RUNNING), (TrialState.RUNNING, TrialState.FAIL)],
    ids=["queued-trial-taken", "stale-trial-failed"],
)
def test_a_trial_is_claimed_by_one_process_only(
    tmp_path: Path, before: TrialState, after: TrialState
) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    study = optuna.create_study(study_name="claims", storage=make_storage(url))
    for _ in range(N_TRIALS):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    trial_ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    if before == TrialState.RUNNING:
        for trial_id in trial_ids:
            assert study._storage.set_trial_state_values(trial_id, TrialState.RUNNING)

    claims = _claims(url, trial_ids, after)

    assert sorted(claims) == trial_ids  # each once: none twice, none lost
    states = {t.state for t in optuna.load_study(study_name="claims", storage=url).get_trials()}
    assert states == {after}
