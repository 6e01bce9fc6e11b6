"""Every use of Optuna's private API by the search, in one place: the study and trial level.

The search needs a few things Optuna exposes only privately: the study's storage and ids (to
write a decision into a trial's system attributes while it runs, to fail a trial, to list
artifacts in the study's system attributes, as optuna-dashboard reads them), whether this
thread runs ``Study.optimize`` (ask-and-tell is told apart from a worker), and the whole study
behind HyperbandPruner's per-bracket view. The storage-level uses (the trials and heartbeats
tables, heartbeat settings, params in one transaction) live below, in
:mod:`spnas.storage._optuna`, so the storage layer does not depend on :mod:`spnas.search`.
``tests/search/test_search_optuna_adapter.py`` is pinned to the Optuna version of
``requirements.txt`` and fails loudly when any of these moves.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

__all__ = [
    "in_optimize_loop",
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


def in_optimize_loop(study: optuna.Study) -> bool:
    """Whether this thread runs ``study.optimize`` (else: ask-and-tell)."""
    return bool(getattr(study._thread_local, "in_optimize_loop", False))


def whole_study(study: optuna.Study) -> optuna.Study:
    """The study itself: HyperbandPruner hands samplers a per-bracket view of it (only its
    bracket's trials, few attributes), and the search needs all of it."""
    return getattr(study, "_study", study)
