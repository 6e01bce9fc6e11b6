"""Every use of Optuna's private API by spnas, in one place.

spnas needs a few things Optuna exposes only privately: the study's storage and ids (to write a
decision into a trial's system attributes while it runs, to fail a trial, to list artifacts in
the study's system attributes, as optuna-dashboard reads them), the heartbeat of a running
trial (a trial waiting to decide beats its own heart), whether this thread runs
``Study.optimize`` (ask-and-tell is told apart from a worker), the whole study behind
HyperbandPruner's per-bracket view, one transaction for several params on an RDB storage,
and the heartbeats table, to find the trials of processes killed before their first heartbeat.
The one use below the search package, the trials table's conditional state change that makes
claiming a trial atomic on SQLite, lives with that storage
(:func:`spnas.storage.change_trial_state_if`), so the storage layer does not depend on
:mod:`spnas.search`. ``tests/search/test_search_optuna_adapter.py`` is pinned to the Optuna
version of ``requirements.txt`` and fails loudly when any of these moves.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled as _is_heartbeat_enabled
from optuna.storages._rdb.models import TrialModel
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "heartbeat_interval",
    "in_optimize_loop",
    "is_heartbeat_enabled",
    "set_trial_params",
    "silent_trials",
    "storage_of",
    "study_id",
    "trial_id",
    "whole_study",
]


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of ``trial`` (``Trial._trial_id``), not its number."""
    return trial._trial_id


def is_heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` records heartbeats (and fails stale trials)."""
    return _is_heartbeat_enabled(storage)


def heartbeat_interval(storage: BaseStorage) -> float:
    """Seconds between two heartbeats of a running trial (heartbeat storages only)."""
    return float(storage.get_heartbeat_interval())  # type: ignore[attr-defined]


def in_optimize_loop(study: optuna.Study) -> bool:
    """Whether this thread runs ``study.optimize`` (else: ask-and-tell)."""
    return bool(getattr(study._thread_local, "in_optimize_loop", False))


def whole_study(study: optuna.Study) -> optuna.Study:
    """The study itself: HyperbandPruner hands samplers a per-bracket view of it (only its
    bracket's trials, few attributes), and the search needs all of it."""
    return getattr(study, "_study", study)


def set_trial_params(
    storage: Any,
    trial: int,
    values: dict[str, Any],
    distributions: dict[str, BaseDistribution],
) -> None:
    """Write params of the trial with storage id ``trial``, in one transaction on an RDB
    storage (Optuna's public API commits once per param: 10 times slower on SQLite, where
    every commit waits for the disk). The distributions must be fixed ones, so Optuna's
    compatibility check (a query per param) has nothing to find."""
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage):
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(backend.scoped_session, True) as session:
            for name, value in values.items():
                distribution = distributions[name]
                backend._set_trial_param_without_commit(
                    session,
                    trial,
                    name,
                    distribution.to_internal_repr(value),
                    distribution,
                    distribution,
                )
        return
    for name, value in values.items():
        distribution = distributions[name]
        storage.set_trial_param(trial, name, distribution.to_internal_repr(value), distribution)


def silent_trials(storage: BaseStorage, study: int) -> list[int]:
    """Storage ids of the RUNNING trials of the study with storage id ``study`` that never
    recorded a heartbeat and started longer ago than the storage's grace period (RDB storages
    with heartbeats; else none).

    Optuna's :func:`~optuna.storages.fail_stale_trials` only fails trials whose last heartbeat
    is old: a trial whose process was killed before its first heartbeat (between creating it
    and deciding) would stay RUNNING for good, and every trial behind it in line would wait.
    """
    from optuna.storages._rdb.models import TrialHeartbeatModel

    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or not is_heartbeat_enabled(backend):
        return []
    grace = backend.grace_period or 2 * heartbeat_interval(backend)
    started_before = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    trials, beats = TrialModel.__table__, TrialHeartbeatModel.__table__
    statement = (
        sqlalchemy.select(trials.c.trial_id)
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(
            trials.c.study_id == study,
            trials.c.state == TrialState.RUNNING,
            trials.c.datetime_start < started_before,
            beats.c.trial_heartbeat_id.is_(None),
        )
    )
    with backend.engine.connect() as connection:
        return [row[0] for row in connection.execute(statement)]
