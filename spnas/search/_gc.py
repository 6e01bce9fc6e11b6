"""Deleting what killed processes leave behind: orphan weights, temporary files, trial scratch.

A worker deletes its own leftovers as it goes (:func:`~spnas.search._objective.clean_trial_dir`
after every trial, an upload whose record failed deletes its file). A worker killed with
SIGKILL, or whose node died, cannot: its trial folder keeps the weights it was training, and an
upload cut short keeps a ``*.tmp`` file in the artifact store. :func:`collect_garbage` removes
those; workers run it when they start and after a storage outage, and ``spnas gc`` runs it by
hand. It never touches a running trial's files.
"""

from __future__ import annotations

import dataclasses
import logging

import optuna

from spnas.search._artifacts import ORPHAN_MIN_AGE_S, collect_orphan_weights
from spnas.search._config import SearchConfig
from spnas.search._objective import clean_trial_dir, trial_dir

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Garbage:
    """What :func:`collect_garbage` deleted."""

    #: Artifact ids (or file names) deleted from the artifact store.
    artifacts: tuple[str, ...]
    #: Numbers of finished trials whose folders held weights or scratch files.
    trial_dirs: tuple[int, ...]


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
            writer's (see :func:`~spnas.search._artifacts.collect_orphan_weights`).
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
    return Garbage(tuple(artifacts), tuple(cleaned))
