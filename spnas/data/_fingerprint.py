"""A data set's fingerprint: what tells, without opening an image, that it is the one
validated.

Validating a data set opens every image (:func:`~spnas.data.validate_dataset`): on COCO about
123 k files, too many for every worker of a cluster search to read again from shared storage
at every start. The study validates once, when it is created, and stores
:func:`dataset_fingerprint`; workers run :func:`check_fingerprint`, which stats the two
annotation files and reads them only when their modification time moved (a copy without
``-p``, a ``touch``) to tell an unchanged content by its SHA-256.

The images themselves are not covered: a file replaced under the same annotation records
fails the trial that reads it, naming the file.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spnas._io import sha256_file
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError


def _annotation_files(splits: DatasetSplits) -> dict[str, Path]:
    return {path.name: path for path in (splits.train_json, splits.val_json)}


def dataset_fingerprint(splits: DatasetSplits) -> dict[str, dict[str, Any]]:
    """The size, modification time (ns) and SHA-256 of each annotation file, by file name:
    ``{"train.json": {"size": …, "mtime_ns": …, "sha256": …}, "val.json": {…}}`` (JSON
    values, for a study's user attributes).
    """
    out = {}
    for name, path in _annotation_files(splits).items():
        stat = path.stat()
        out[name] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256_file(path),
        }
    return out


def _when(mtime_ns: int) -> str:
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def check_fingerprint(splits: DatasetSplits, expected: Mapping[str, Mapping[str, Any]]) -> None:
    """The annotation files of ``splits`` are those of ``expected``
    (:func:`dataset_fingerprint`): the same size, and the same modification time or, when it
    moved, the same SHA-256. Reads a file only when its modification time moved.

    Raises:
        DataError: naming the annotation file, what it is and what was expected.
    """
    files = _annotation_files(splits)
    for name, wanted in sorted(expected.items()):
        path = files.get(name)
        if path is None:
            raise DataError(
                f"data set {str(splits.root)!r} has no annotation file {name!r}: expected the "
                f"files it was validated with ({', '.join(sorted(expected))})"
            )
        stat = path.stat()
        if stat.st_size != wanted["size"]:
            raise DataError(
                f"annotation file {str(path)!r} changed since the data set was validated: "
                f"{stat.st_size} bytes (modified {_when(stat.st_mtime_ns)}), expected "
                f"{wanted['size']} bytes (modified {_when(wanted['mtime_ns'])})"
            )
        if stat.st_mtime_ns == wanted["mtime_ns"]:
            continue
        digest = sha256_file(path)
        if digest != wanted["sha256"]:
            raise DataError(
                f"annotation file {str(path)!r} changed since the data set was validated: "
                f"SHA-256 {digest[:12]}… (modified {_when(stat.st_mtime_ns)}), expected "
                f"{wanted['sha256'][:12]}… (modified {_when(wanted['mtime_ns'])})"
            )
