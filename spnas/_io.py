"""Files written whole and weights read without running code.

Every file spnas writes that another process may read while it is written (weights, data set
jsons, checkpoints, exported detectors) goes through :func:`atomic_write`. Every weights or
checkpoint file spnas reads (``--init``, ``MODEL.WEIGHTS``, detectron2 resume checkpoints,
pretraining checkpoints, parents' weights, exported detectors) goes through
:func:`load_tensor_file`: such files come from other people and other machines, and
unpickling one may run whatever code it names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spnas.exceptions import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = ["PICKLE_SUFFIXES", "atomic_write", "load_tensor_file", "sha256_file"]

#: Suffixes of files that only :mod:`pickle` reads (detectron2 and Caffe2 model zoo files):
#: :func:`load_tensor_file` refuses them by name, before reading a byte.
PICKLE_SUFFIXES = (".pkl", ".pickle")


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


def load_tensor_file(
    path: str | Path, what: str = "weights file", map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``: the one way spnas reads weights and checkpoints.

    ``weights_only`` unpickles tensors, containers and numbers and refuses anything else, so a
    file cannot run code however it was made; ``.pkl`` files are refused by name, since they
    are plain pickles (detectron2 model zoo) that only an unrestricted unpickler reads.

    Args:
        path: the file.
        what: what the file is to the caller (``"checkpoint"``, ``"--init weights"``), for
            the error message.
        map_location: where tensors go (``torch.load``'s argument).

    Raises:
        WeightsError: ``"<what> '<path>' …"`` when the file is a ``.pkl``, missing, truncated,
            corrupt, or pickles objects other than tensors and containers.
    """
    import pickle

    import torch

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{what} {str(path)!r} is a pickle ({path.suffix}) file, which can run code when "
            "read: expected a PyTorch file of tensors (torch.save of a state dict, .pth)"
        )
    if not path.is_file():
        raise WeightsError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (
            "it is not a tensors-only PyTorch file (truncated or corrupt, or it pickles "
            f"objects torch.load(weights_only=True) refuses: {_first_line(exc, 'Unsupported')})"
        )
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
    raise WeightsError(f"{what} {str(path)!r} could not be read: {reason}")


def _first_line(exc: BaseException, prefer: str | None = None) -> str:
    """The informative line of a (often many-line) torch error: the first that mentions
    ``prefer`` (any case), else the first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if prefer is not None:
        lines = [line for line in lines if prefer.lower() in line.lower()] or lines
    return lines[0][:200] if lines else type(exc).__name__
