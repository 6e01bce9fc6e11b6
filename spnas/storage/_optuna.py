"""Every use of Optuna's private API by the storage layer, in one place.

The storage layer needs a few things Optuna exposes only privately: the trials table, to change
a trial's state only from the state expected in one conditional ``UPDATE`` (what makes claiming
a trial atomic on SQLite) and to find the trials of processes killed before their first
heartbeat in the heartbeats table; whether a storage records heartbeats and how often; and
its params and system attributes tables, to write a trial's decision and params in one
transaction. The study- and trial-level uses
are the search's (:mod:`spnas.search._optuna`). ``tests/search/test_search_optuna_adapter.py`` is
pinned to the Optuna version of ``requirements.txt`` and fails loudly when any of these moves.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled as _is_heartbeat_enabled
from optuna.storages._rdb.models import TrialModel, TrialParamModel, TrialSystemAttributeModel
from optuna.trial import TrialState

__all__ = [
    "change_trial_state_if",
    "heartbeat_interval",
    "is_heartbeat_enabled",
    "silent_trials",
    "update_trial",
]


def change_trial_state_if(
    storage: RDBStorage, trial: int, old: TrialState, new: TrialState, stamp: str
) -> bool:
    """Set the state of the trial with storage id ``trial`` to ``new`` only if it is ``old``,
    and its column ``stamp`` (``datetime_start`` or ``datetime_complete``) to now, in one
    conditional ``UPDATE``: atomic even on SQLite, which has no row locks. Whether it changed.

    It writes Optuna's private trials table (``optuna.storages._rdb.models.TrialModel``).
    """
    table = TrialModel.__table__
    statement = (
        sqlalchemy.update(table)
        .where(table.c.trial_id == trial, table.c.state == old)
        .values({"state": new, stamp: datetime.datetime.now()})
    )
    with storage.engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def is_heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether ``storage`` records heartbeats (and fails stale trials)."""
    return _is_heartbeat_enabled(storage)


def heartbeat_interval(storage: BaseStorage) -> float:
    """Seconds between two heartbeats of a running trial (heartbeat storages only)."""
    return float(storage.get_heartbeat_interval())  # type: ignore[attr-defined]


def update_trial(
    storage: Any,
    trial: int,
    *,
    system_attrs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    distributions: Mapping[str, BaseDistribution] | None = None,
) -> None:
    """Write system attributes and params of the trial with storage id ``trial``.

    On an RDB storage, in one transaction: the trial's state (only a trial not finished may
    change, as Optuna checks), the attributes (their old rows deleted, the new inserted) and
    one multi-row ``INSERT`` into Optuna's params table. So other processes see all of it or
    none, and it costs one commit: Optuna's public API commits once per attribute and per
    param, and reads the trial and a previous distribution for each param (19 params took
    about 20 ms on SQLite, a decision's two attributes 2 ms each). Elsewhere (in memory,
    through the storage proxy), one call each, attributes first, in their order.

    ``params`` must have fixed distributions (``distributions``, by name), for which Optuna's
    compatibility check (the previous-distribution read) has nothing to find.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial has finished.
        KeyError: there is no such trial.
    """
    system_attrs = dict(system_attrs or {})
    params = dict(params or {})
    distributions = dict(distributions or {})
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial, key, value)
        for name, value in params.items():
            distribution = distributions[name]
            storage.set_trial_param(trial, name, distribution.to_internal_repr(value), distribution)
        return
    if not system_attrs and not params:
        return
    trials = TrialModel.__table__
    attrs_table = TrialSystemAttributeModel.__table__
    with backend.engine.begin() as connection:
        state = connection.execute(
            sqlalchemy.select(trials.c.state).where(trials.c.trial_id == trial)
        ).scalar_one_or_none()
        if state is None:
            raise KeyError(f"no trial with trial_id {trial} exists")
        backend.check_trial_is_updatable(trial, state)
        if system_attrs:
            connection.execute(
                sqlalchemy.delete(attrs_table).where(
                    attrs_table.c.trial_id == trial, attrs_table.c.key.in_(list(system_attrs))
                )
            )
            rows = [
                {"trial_id": trial, "key": key, "value_json": json.dumps(value)}
                for key, value in system_attrs.items()
            ]
            connection.execute(sqlalchemy.insert(attrs_table), rows)
        if params:
            rows = [
                {
                    "trial_id": trial,
                    "param_name": name,
                    "param_value": distributions[name].to_internal_repr(value),
                    "distribution_json": distribution_to_json(distributions[name]),
                }
                for name, value in params.items()
            ]
            connection.execute(sqlalchemy.insert(TrialParamModel.__table__), rows)


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
