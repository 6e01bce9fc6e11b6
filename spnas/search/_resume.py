"""Resuming a search that stopped as ``failed`` once the cause is fixed.

A barrier (seed, reignition, parallel seed, final), a round's control or a verification run
that fails ``search.max_barrier_attempts`` times ends the search as ``failed``: something is wrong that retrying at once will not fix
(a full disk, a broken artifact store, a truncated file). Once it is fixed, starting workers
again (``spnas worker``, ``spnas search``) or running ``spnas resume`` queues one more
attempt of it, with the same decision, as Optuna's retries do: the new trial's
``retry_history`` names every failed attempt, so they no longer count (the state machine
drops failures that were retried) and the barrier gets its attempts afresh. Every completed
trial is kept; nothing else changes.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from spnas.search._artifacts import WEIGHTS_ATTR, WEIGHTS_SHA256_ATTR
from spnas.search._config import SearchConfig
from spnas.search._optuna import storage_of, study_id
from spnas.search._state import SearchState, TrialKind

_logger = logging.getLogger(__name__)

#: Kinds whose failure is one failed candidate among many, never the search's end.
_CANDIDATE_KINDS = frozenset(
    {TrialKind.SERIAL, TrialKind.PARALLEL, TrialKind.EXHAUSTED, TrialKind.IDLE}
)
#: Workers that start together may all find the study failed; each writes a claim and only
#: the one whose claim is still there this long after queues the retry.
CLAIM_SETTLE_S = 2.0


def resume_failed_search(
    study: optuna.Study, config: SearchConfig, *, settle: float = CLAIM_SETTLE_S
) -> int | None:
    """Queue a new attempt of the barrier that made the search fail (see the module docstring).

    Workers starting together claim the resumption in a study system attribute: the one whose
    claim is still there after ``settle`` seconds queues the attempt, the others wait as long
    again (for the attempt to be queued) and return. ``settle=0`` (``spnas resume``, run
    alone) queues it at once, whatever claims a crashed process left.

    Returns:
        The number of the failed attempt that was retried, or ``None`` when the search is
        not failed, or another process resumed it.
    """
    trials = study.get_trials(deepcopy=False)
    state = SearchState.from_trials(trials, config)
    if state.phase != "failed":
        return None
    # The attempts of one thing to train: a barrier, a round's control, a verification run.
    groups: dict[tuple[Any, ...], list[int]] = {}
    for record in state.records:
        d = record.decision
        if record.state == TrialState.FAIL and d.kind not in _CANDIDATE_KINDS:
            key = (d.kind, d.round, d.parent, d.candidate, d.repeat)
            groups.setdefault(key, []).append(record.number)
    failed = [g for g in groups.values() if len(g) >= config.search.max_barrier_attempts]
    if not failed:
        return None
    numbers = max(failed, key=max)
    last = trials[max(numbers)]
    storage, sid = storage_of(study), study_id(study)
    key = f"spnas:resumed:{last.number}"
    token = uuid.uuid4().hex
    if settle > 0:
        if key not in storage.get_study_system_attrs(sid):
            storage.set_study_system_attr(sid, key, token)
        time.sleep(settle)
        if storage.get_study_system_attrs(sid).get(key) != token:
            time.sleep(settle)  # the winner queues the attempt meanwhile
            return None
    history = sorted({*last.system_attrs.get("retry_history", []), *numbers})
    system_attrs = {**last.system_attrs, "retry_history": history}
    system_attrs.setdefault("failed_trial", last.number)
    user_attrs = {
        k: v for k, v in last.user_attrs.items() if k not in (WEIGHTS_ATTR, WEIGHTS_SHA256_ATTR)
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=last.params,
            distributions=last.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    _logger.warning(
        "study %r had failed (%s); queued a new attempt of trial %d's barrier",
        study.study_name,
        state.reason,
        last.number,
    )
    return last.number
