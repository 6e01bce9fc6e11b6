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

Weights whose trial never recorded them are never left in the store: an upload whose listing
or trial attribute fails (the database went away) deletes its file at once, and
:func:`collect_orphan_weights` (run when a worker starts, after a storage outage, and by
``spnas gc``) deletes what a killed process left: listed weights no live trial refers to,
unlisted files and half-written temporary files older than an age limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from spnas.search._optuna import storage_of, study_id, trial_id

_logger = logging.getLogger(__name__)

#: Prefix of the study system attributes that list a trial's artifacts in optuna-dashboard.
DASHBOARD_ARTIFACTS_PREFIX = "dashboard:artifacts:"
#: User attribute holding the artifact id of a trial's trained weights.
WEIGHTS_ATTR = "spnas:weights"
#: User attribute holding the SHA-256 of those weights, checked on every download.
WEIGHTS_SHA256_ATTR = "spnas:weights_sha256"
#: Age (seconds) after which a stored file that no trial refers to is taken for a killed
#: writer's leftover: an upload lists its file within seconds of writing it, and one that
#: cannot (a database outage) deletes it itself.
ORPHAN_MIN_AGE_S = 3600.0


def _key(trial_id: int, artifact_id: str) -> str:
    return f"{DASHBOARD_ARTIFACTS_PREFIX}{trial_id}:{artifact_id}"


def upload_weights(trial: optuna.Trial, artifact_store: Any, path: str | Path, sha256: str) -> str:
    """Store the file ``path`` as the weights of ``trial``; returns the artifact id.

    The file is written, listed for the dashboard, then recorded in the trial's user attributes
    (:data:`WEIGHTS_SHA256_ATTR`, then :data:`WEIGHTS_ATTR`), so a listed artifact always exists.
    When a write to the storage fails after the file was stored (a database restart), the file
    is deleted again before the error propagates: the trial is retried, and weights that no
    trial records would stay in the store for good.
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
    try:
        storage_of(study).set_study_system_attr(
            study_id(study), _key(trial_id(trial), artifact_id), json.dumps(meta)
        )
        trial.set_user_attr(WEIGHTS_SHA256_ATTR, sha256)
        trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
    except BaseException:
        # A listing that was written after all is unlisted by collect_orphan_weights.
        with contextlib.suppress(ArtifactNotFound, OSError):
            artifact_store.remove(artifact_id)
        raise
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


def collect_orphan_weights(
    study: optuna.Study, artifact_store: Any, *, min_age: float = ORPHAN_MIN_AGE_S
) -> list[str]:
    """Delete the weights in ``artifact_store`` that no trial can use; returns their ids.

    Kept: the weights a complete, running or waiting trial records (:data:`WEIGHTS_ATTR`), and
    those listed for a trial that is still running (an upload between storing and recording).
    Deleted (and unlisted): weights listed for or recorded by failed trials only (a trial whose
    result a storage error or a kill lost; no trial starts from a failed one), and, in a file
    system store, files and temporary files (``*.tmp`` of a killed upload) that nothing lists or
    records and that are older than ``min_age`` seconds.
    """
    storage, sid = storage_of(study), study_id(study)
    trials = study.get_trials(deepcopy=False)
    by_id = {trial_id(t): t for t in trials}
    keep = {
        t.user_attrs[WEIGHTS_ATTR]
        for t in trials
        if WEIGHTS_ATTR in t.user_attrs and t.state != TrialState.FAIL
    }
    listed: dict[str, tuple[str, int]] = {}  # artifact id -> (listing key, trial id)
    for key, value in storage.get_study_system_attrs(sid).items():
        if not key.startswith(DASHBOARD_ARTIFACTS_PREFIX) or json.loads(value) is None:
            continue
        owner, _, artifact_id = key.removeprefix(DASHBOARD_ARTIFACTS_PREFIX).partition(":")
        listed[artifact_id] = (key, int(owner))
        trial = by_id.get(int(owner))
        if trial is not None and not trial.state.is_finished():
            keep.add(artifact_id)
    removed = []
    for artifact_id, (key, _) in listed.items():
        if artifact_id in keep:
            continue
        storage.set_study_system_attr(sid, key, json.dumps(None))
        with contextlib.suppress(ArtifactNotFound, FileNotFoundError):
            artifact_store.remove(artifact_id)
        removed.append(artifact_id)
    recorded = {t.user_attrs[WEIGHTS_ATTR] for t in trials if WEIGHTS_ATTR in t.user_attrs}
    for artifact_id in recorded - keep - set(listed):
        with contextlib.suppress(ArtifactNotFound, FileNotFoundError):
            artifact_store.remove(artifact_id)
            removed.append(artifact_id)
    directory = getattr(artifact_store, "directory", None)  # a file system store
    if directory is not None and Path(directory).is_dir():
        now = time.time()
        for path in Path(directory).iterdir():
            # A temporary file is a write in progress, or a killed one once it is old.
            if path.name in keep and not path.name.endswith(".tmp"):
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and now - path.stat().st_mtime > min_age:
                    path.unlink()
                    removed.append(path.name)
    for artifact_id in removed:
        _logger.info("deleted weights %s that no trial can use", artifact_id)
    return removed
