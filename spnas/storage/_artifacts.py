"""The artifact store of a study: a directory or an S3 bucket.

Artifact locations: a directory (``FileSystemArtifactStore``; share it between nodes, e.g. on
NFS) or ``s3://bucket[/prefix]`` (``Boto3ArtifactStore``; needs ``boto3``).

File system artifacts are written atomically (a temporary file renamed into place), so a
worker killed during an upload leaves no half-written artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from spnas._optional import require
from spnas.storage._errors import StorageError
from spnas.storage._urls import redact


def make_artifact_store(
    location: str | Path | None,
) -> optuna.artifacts.FileSystemArtifactStore | Any:
    """The artifact store for ``location``: a directory or ``s3://bucket[/prefix]``.

    Raises:
        StorageError: when the directory cannot be created, or ``boto3`` is missing for S3.
    """
    if location is None or not str(location):
        raise StorageError("no artifact store location: expected a directory or s3://bucket")
    location = str(location)
    if location.startswith("s3://"):
        boto3 = require(
            "boto3",
            package="boto3",
            extra="s3",
            purpose=f"artifact store {location!r}",
            error=StorageError,
        )
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        from optuna.artifacts import Boto3ArtifactStore

        store = Boto3ArtifactStore(bucket, client=boto3.client("s3"))
        if prefix:
            return _PrefixedStore(store, prefix.rstrip("/") + "/")
        return store
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"artifact directory {location!r} cannot be created: {exc}") from exc
    return _AtomicFileSystemStore(str(path))


def check_artifact_store(location: str | Path) -> None:
    """Write, read back and remove a probe artifact at ``location``.

    Raises:
        StorageError: naming the location when any of the three fails (a read-only or full
            file system, a bucket that does not exist or denies access, no network).
    """
    import io
    import uuid

    store = make_artifact_store(location)
    probe = f"spnas-probe-{uuid.uuid4().hex}"
    try:
        store.write(probe, io.BytesIO(b"spnas"))
        with store.open_reader(probe) as reader:
            if reader.read() != b"spnas":
                raise OSError("the probe artifact read back differently")
        store.remove(probe)
    except Exception as exc:  # stores raise OSError, botocore errors, …
        raise StorageError(
            f"artifact store {redact(str(location))!r} is not usable: {type(exc).__name__}: {exc}"
        ) from None


class _PrefixedStore:
    """Keeps every artifact of a study under a key prefix of a shared bucket."""

    def __init__(self, store: Any, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self._store.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self._store.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self._prefix + artifact_id)


class _AtomicFileSystemStore(optuna.artifacts.FileSystemArtifactStore):
    """A file system artifact store whose writes are atomic (see :mod:`spnas._io`)."""

    @property
    def directory(self) -> Path:
        """Where the artifacts are (one file each, named by its artifact id)."""
        return Path(self._base_path)

    def write(self, artifact_id: str, content_body: Any) -> None:
        import shutil

        from spnas._io import atomic_write

        def copy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(content_body, f)

        atomic_write(self._get_filepath(artifact_id), copy)
