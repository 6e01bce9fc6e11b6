"""Deleting what killed processes leave behind: orphan weights, temporary files, trial scratch,
checkpoints no retry will resume from.

A worker deletes its own leftovers as it goes (:func:`~spnas.search._objective.clean_trial_dir`
after every trial, an upload whose record failed deletes its file, a decision's checkpoint
folder when its training is done). A worker killed with SIGKILL, or whose node died, cannot:
its trial folder keeps the weights it was training, and an upload cut short keeps a ``*.tmp``
file in the artifact store. :func:`collect_garbage` removes those; workers run it when they
start and after a storage outage, and ``spnas gc`` runs it by hand. It never touches a running
trial's files, nor the checkpoints of a decision that a trial runs or waits to run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from spnas.search._artifacts import ORPHAN_MIN_AGE_S, collect_orphan_weights
from spnas.search._config import SearchConfig
from spnas.search._objective import (
    CHECKPOINTS,
    checkpoint_dir,
    clean_trial_dir,
    remove_checkpoints,
    trial_dir,
    trial_seed,
)
from spnas.search._state import Decision

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Garbage:
    """What :func:`collect_garbage` deleted."""

    #: Artifact ids (or file names) deleted from the artifact store.
    artifacts: tuple[str, ...]
    #: Numbers of finished trials whose folders held weights or scratch files.
    trial_dirs: tuple[int, ...]
    #: Names of the checkpoint folders deleted (``study.workdir/checkpoints/<name>``).
    checkpoints: tuple[str, ...] = ()


def collect_garbage(
    study: optuna.Study,
    config: SearchConfig,
    artifact_store: object,
    *,
    min_age: float = ORPHAN_MIN_AGE_S,
) -> Garbage:
    """Delete the weights no trial can use and the scratch files of finished trials.

    Args:
        study: the search study.
        config: its configuration (``study.workdir`` holds the trial folders).
        artifact_store: the study's artifact store.
        min_age: seconds after which a file in the store that nothing records is a killed
            writer's (see :func:`~spnas.search._artifacts.collect_orphan_weights`), and a
            checkpoint folder of a decision that no trial runs or waits to run is abandoned.
    """
    artifacts = collect_orphan_weights(study, artifact_store, min_age=min_age)
    cleaned = []
    for trial in study.get_trials(deepcopy=False):
        # is_dir first: most finished trials' folders were cleaned when they ended.
        folder = trial_dir(config.study.workdir, trial.number)
        if (
            trial.state.is_finished()
            and folder.is_dir()
            and clean_trial_dir(config.study.workdir, trial.number)
        ):
            cleaned.append(trial.number)
    if cleaned:
        _logger.info("deleted the weights left in the folders of trials %s", cleaned)
    checkpoints = collect_stale_checkpoints(study, config, min_age=min_age)
    return Garbage(tuple(artifacts), tuple(cleaned), checkpoints)


def collect_stale_checkpoints(
    study: optuna.Study, config: SearchConfig, *, min_age: float = ORPHAN_MIN_AGE_S
) -> tuple[str, ...]:
    """Delete the checkpoint folders (:func:`~spnas.search._objective.checkpoint_dir`) that no
    retry will resume from; returns their names.

    A folder is kept while a trial with its decision is RUNNING or WAITING (a queued retry
    carries its decision). Otherwise it is deleted when a trial with its decision completed or
    was pruned (done elsewhere: a worker that finished it but could not delete it), or when
    nothing was written in it for ``min_age`` seconds (a decision that failed for good).
    """
    root = Path(config.study.workdir) / CHECKPOINTS
    if not root.is_dir():
        return ()
    live: set[str] = set()
    done: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        decision = Decision.of(trial)
        if decision is None:
            continue
        name = checkpoint_dir(root.parent, decision, trial_seed(config, decision)).name
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            live.add(name)
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done.add(name)
    now = time.time()
    deleted = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name in live:
            continue
        if folder.name in done or now - _last_write(folder) > min_age:
            remove_checkpoints(folder)
            deleted.append(folder.name)
    if deleted:
        _logger.info("deleted %d checkpoint folder(s) no retry resumes from", len(deleted))
    return tuple(deleted)


def _last_write(folder: Path) -> float:
    """When anything in ``folder`` (or the folder itself) was last written."""
    return max((p.stat().st_mtime for p in folder.iterdir()), default=folder.stat().st_mtime)
