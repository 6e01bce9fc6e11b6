"""A full disk pauses a worker instead of failing its trials until the search gives up.

Training writes checkpoints and weights in the trial's folder (``study.workdir``) and uploads
the weights to the artifact store. When either file system is full, every trial fails the
same way, and a barrier that fails ``search.max_barrier_attempts`` times ends the search as
``failed``, within a minute. On a cluster a disk stays full for longer than that (until a
person or a cleanup job frees it), so a worker whose trial failed on a full disk queues the
trial's retry at once, with its decision, and waits: with a growing back-off, until the free
space is back, then goes on by itself; after ``search.disk_full_wait_seconds`` in a row it stops
with an error naming the directory.

A full disk is recognised by the error (``ENOSPC``, ``EDQUOT`` anywhere in the exception's
chain) or, since ``torch.save`` reports a failed write as a plain ``RuntimeError``, by the
free space left after the failure: less than :func:`space_needed`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from spnas.storage import StorageError

_logger = logging.getLogger(__name__)

#: Error numbers of a file system with no space left for this user.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: The least free space a trial needs, whatever the size of its weights.
MIN_FREE_BYTES = 16 << 20
#: The first wait after a trial failed on a full disk; it doubles up to MAX_WAIT_S.
FIRST_WAIT_S = 5.0
MAX_WAIT_S = 60.0


def local_dirs(workdir: str | Path, artifacts: str | Path | None) -> list[Path]:
    """The directories a trial writes to: its work directory and a local artifact store."""
    dirs = [Path(workdir)]
    if artifacts and "://" not in str(artifacts):
        dirs.append(Path(artifacts))
    return dirs


def space_needed(dirs: Iterable[Path]) -> int:
    """Free bytes a trial needs: twice the largest stored weights, at least MIN_FREE_BYTES."""
    largest = 0
    for directory in dirs:
        with contextlib.suppress(OSError):
            for path in directory.iterdir():
                with contextlib.suppress(OSError):
                    largest = max(largest, path.stat().st_size)
    return max(MIN_FREE_BYTES, 2 * largest)


def _free(directory: Path) -> int:
    # The directory may not exist yet (a first trial): its nearest existing parent counts.
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return shutil.disk_usage(directory).free


def is_disk_full(exc: BaseException, dirs: Iterable[Path]) -> bool:
    """Whether ``exc`` (a trial's failure) came from a full file system among ``dirs``."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    dirs = list(dirs)
    needed = space_needed(dirs)
    try:
        return any(_free(d) < needed for d in dirs)
    except OSError:
        return False


def _has_space(dirs: list[Path], needed: int) -> bool:
    """Whether ``needed`` bytes can be written in each of ``dirs`` (free space and quota)."""
    for directory in dirs:
        if _free(directory) < needed:
            return False
        probe = directory / f".spnas-space-probe-{uuid.uuid4().hex}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                chunk = b"\0" * (1 << 20)
                for _ in range(needed // len(chunk)):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)
    return True


def wait_for_space(dirs: list[Path], waited: float, limit: float) -> float:
    """Wait until every directory of ``dirs`` has the space a trial needs; returns the
    seconds waited (the caller adds them to ``waited`` for the next call).

    Raises:
        StorageError: when the disk stays full for ``limit`` seconds in all (``waited``
            included), naming the directories and their free space.
    """
    needed = space_needed(dirs)
    delay, slept = FIRST_WAIT_S, 0.0
    while True:
        if waited + slept >= limit:
            free = ", ".join(f"{d}: {_free(d) >> 20} MiB free" for d in dirs)
            raise StorageError(
                f"no space left for a trial ({needed >> 20} MiB needed) for {waited + slept:.0f}"
                f" s, more than search.disk_full_wait_seconds={limit:g} ({free}); free space "
                "and start the workers again: the trial is queued with its decision"
            )
        _logger.warning(
            "disk full (%s need %d MiB free); trying again in %.0f s (waited %.0f of %g s)",
            ", ".join(map(str, dirs)),
            needed >> 20,
            delay,
            waited + slept,
            limit,
        )
        pause = min(delay, limit - waited - slept)
        time.sleep(pause)
        slept += pause
        delay = min(2 * delay, MAX_WAIT_S)
        if _has_space(dirs, needed):
            _logger.warning("disk space is back; going on")
            return slept
