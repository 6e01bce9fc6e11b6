"""Trial weights in the artifact store, listed where optuna-dashboard lists a trial's artifacts.

``optuna.artifacts.upload_artifact`` lists an artifact in its trial's system attributes, which
can no longer change once the trial is finished. The search deletes the weights of finished
trials that can no longer be parents (``search.keep_top_k``), so a trial-level entry would go on
naming a deleted file, and the dashboard would offer a download that fails (HTTP 500).

optuna-dashboard 0.21 also lists, under each trial, the study system attributes
``dashboard:artifacts:<trial id>:<artifact id>``, and ignores those set to ``null`` (its own
"delete artifact" button does this). Study attributes can always be written, so the weights
are listed there, and unlisted before they are deleted: every artifact the dashboard lists
exists.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound

from spnas.search._optuna import storage_of, study_id, trial_id

_logger = logging.getLogger(__name__)

#: Prefix of the study system attributes that list a trial's artifacts in optuna-dashboard.
DASHBOARD_ARTIFACTS_PREFIX = "dashboard:artifacts:"


def _key(trial_id: int, artifact_id: str) -> str:
    return f"{DASHBOARD_ARTIFACTS_PREFIX}{trial_id}:{artifact_id}"


def upload_weights(trial: optuna.Trial, artifact_store: Any, path: str | Path) -> str:
    """Store the file ``path`` as an artifact of ``trial``; returns the artifact id.

    The file is written before it is listed, so a listed artifact always exists.
    """
    path = Path(path)
    artifact_id = str(uuid.uuid4())
    mimetype, encoding = mimetypes.guess_type(path.name)
    with path.open("rb") as stream:
        artifact_store.write(artifact_id, stream)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetype or "application/octet-stream",
        "encoding": encoding,
    }
    study = trial.study
    storage_of(study).set_study_system_attr(
        study_id(study), _key(trial_id(trial), artifact_id), json.dumps(meta)
    )
    return artifact_id


def remove_weights(
    study: optuna.Study,
    weights: Iterable[tuple[optuna.trial.FrozenTrial, str]],
    artifact_store: Any,
) -> None:
    """Unlist, then delete, the artifacts ``(trial, artifact id)`` (deleted already: skipped).

    Weights stored before they were listed in the study (older spnas) are only deleted.
    """
    listed = storage_of(study).get_study_system_attrs(study_id(study))
    for trial, artifact_id in weights:
        key = _key(trial_id(trial), artifact_id)
        if key in listed:
            if json.loads(listed[key]) is None:
                continue
            storage_of(study).set_study_system_attr(study_id(study), key, json.dumps(None))
        try:
            artifact_store.remove(artifact_id)
        except (ArtifactNotFound, FileNotFoundError):
            continue
        _logger.debug("deleted the weights of trial %d", trial.number)
