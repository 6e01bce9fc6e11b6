"""Writing files so that readers never see half of one.

Every file spnas writes that another process may read while it is written (weights, data set
jsons, checkpoints, exported detectors) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "sha256_file"]


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a sibling file, then rename it into place.

    ``os.replace`` within one directory is atomic, so a reader sees the previous file or the
    complete new one, and a process killed while writing leaves the previous file intact. The
    parent directory is created; the temporary file is removed when ``write`` raises. The
    temporary name carries the process id, so processes writing the same file do not mix
    their bytes: the last rename wins.

    Example::

        atomic_write(path, lambda tmp: tmp.write_text(text))
        atomic_write(path, functools.partial(torch.save, state_dict))

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of the file at ``path`` (stored with every uploaded weights artifact,
    trial user attribute ``spnas:weights_sha256``, and checked when it is downloaded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
