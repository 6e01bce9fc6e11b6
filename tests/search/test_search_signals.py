"""Stop signals and the storage: a signal that arrives inside a storage call is raised after it.

Raised inside SQLAlchemy, a stop signal ends a statement half-way; on SQLite the invalidated
connection (its cursor kept alive by the exception's traceback) keeps the database's lock, and
the writes that fail and re-queue the trial wait behind it for the whole busy timeout (120 s).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from spnas.search._signals import Preempted, preemption_signals, raise_if_preempted
from spnas.storage import make_storage


def _engine(storage: Any) -> Any:
    return getattr(storage, "_backend", storage).engine


@pytest.mark.parametrize("statement", ["SELECT", "INSERT"])
def test_a_stop_signal_inside_a_storage_call_is_raised_after_it(
    tmp_path: Path, statement: str
) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="signals")
    trial_id = study.ask()._trial_id
    fired: list[str] = []

    def stop_now(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        # The handler runs at the next bytecode: here, inside SQLAlchemy's execution.
        if not fired and sql.lstrip().upper().startswith(statement):
            fired.append(sql)
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(_engine(storage), "before_cursor_execute", stop_now)
    with preemption_signals():
        try:
            if statement == "SELECT":
                storage.get_trial(trial_id)
            else:
                storage.set_trial_user_attr(trial_id, "note", "written whole")
        except Preempted:
            pytest.fail(f"Preempted raised inside the storage's {statement}")
        assert fired, "the statement never ran"
        with pytest.raises(Preempted):
            raise_if_preempted()  # the next safe point
        # What a preempted worker writes next (fail the trial, queue its retry): at once.
        started = time.monotonic()
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        assert time.monotonic() - started < 5.0
    assert storage.get_trial(trial_id).state == TrialState.FAIL
    if statement == "INSERT":
        assert storage.get_trial(trial_id).user_attrs["note"] == "written whole"
