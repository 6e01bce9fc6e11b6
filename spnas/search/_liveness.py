"""Liveness through any storage: beats in a trial's system attributes.

Optuna's heartbeats live in RDB storages only: :class:`optuna.storages.GrpcStorageProxy`
(``spnas storage-proxy``) and the journal storage record none, so a trial whose worker was
killed (SIGKILL, OOM, a lost node) would stay RUNNING, and every trial behind it in line
(:class:`~spnas.search.SPNASSampler` decides in trial-number order) would wait for good.

On such a storage a running trial beats through the storage's ordinary API: its worker writes
a counter into the trial's system attribute ``spnas:beat`` every ``search.beat_seconds``
(:class:`Pulse` while the objective runs; a trial waiting to decide beats twice a period).
The waiting workers watch the beats of the trials they read anyway while they wait, i.e. of
the trials they wait for (:class:`BeatWatch`): a trial whose counter has not moved for
``search.beat_grace_seconds``, *as measured by the watcher's own monotonic clock*, is dead;
the first watcher to fail it queues its retry with its decision
(:func:`~spnas.search._signals.requeue_interrupted`). Only the counter's change is compared,
never a timestamp written by another node, so clocks that disagree between nodes change
nothing. A trial never seen beating is timed from the moment the watcher first saw it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from spnas.search._optuna import trial_id
from spnas.storage import is_heartbeat_enabled

_logger = logging.getLogger(__name__)

#: The trial system attribute that counts a running trial's beats.
BEAT_ATTR = "spnas:beat"


def needs_beats(storage: BaseStorage) -> bool:
    """Whether trials on ``storage`` must beat in their system attributes: a storage that
    several processes share and that records no Optuna heartbeats (the gRPC proxy, a journal
    file, an RDB storage opened without heartbeats). An in-memory storage is one process's."""
    backend = getattr(storage, "_backend", storage)
    return not isinstance(backend, InMemoryStorage) and not is_heartbeat_enabled(backend)


#: Beats of this process: every beat a new number, whichever thread or trial writes it.
_beats = itertools.count(1)


def next_beat() -> int:
    """A number this process has not beaten before (a watcher needs only a change)."""
    return next(_beats)


def record_beat(storage: BaseStorage, trial_id: int, count: int) -> None:
    """Record beat number ``count`` of the running trial with storage id ``trial_id``."""
    storage.set_trial_system_attr(trial_id, BEAT_ATTR, count)


class Pulse:
    """A context manager whose thread beats a running trial every ``interval`` seconds.

    Beating is best effort: a storage error is logged and the next beat tried; a trial whose
    beats fail for a whole grace period is failed by the watchers, as it would be with
    Optuna's heartbeats.
    """

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spnas-pulse", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                record_beat(self._storage, self._trial_id, next_beat())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # failed as dead while this worker was paused: the worker finds out
            except Exception as exc:  # the storage is down: the next beat may pass
                _logger.warning("trial id %d: beat failed (%s)", self._trial_id, exc)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> Pulse:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


class BeatWatch:
    """The beats of running trials as one watcher saw them, and which stopped.

    A watcher reads only what it waits on (the head of its line, the few trials it watches,
    the whole history at a full look), so each call may pass another subset of the study's
    trials: a trial is timed across the calls that read it, and forgotten once read finished,
    or once no call read it for a grace period (read again, it is timed afresh: the watcher
    cannot say since when its beat has stood still, and waits a whole grace period again).

    Args:
        grace: seconds a trial's beat may stand still before the trial counts as dead.
        clock: the watcher's clock (monotonic seconds); a test passes its own.
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace = grace
        self._clock = clock
        # trial id -> (last beat seen, when this watcher saw it change or first saw it,
        # when this watcher last read it)
        self._seen: dict[int, tuple[object, float, float]] = {}

    def dead(self, trials: Iterable[FrozenTrial], *, exclude: int | None = None) -> list[int]:
        """Storage ids of the RUNNING trials of ``trials`` (as just read: any of the study's
        trials) whose beat has not changed for the grace period; ``exclude`` is the
        watcher's own trial."""
        now = self._clock()
        stopped = []
        for trial in trials:
            tid = trial_id(trial)
            if trial.state != TrialState.RUNNING:
                self._seen.pop(tid, None)
                continue
            if tid == exclude:
                continue
            count = trial.system_attrs.get(BEAT_ATTR)
            last = self._seen.get(tid)
            changed = last[1] if last is not None and last[0] == count else now
            self._seen[tid] = (count, changed, now)
            if now - changed >= self._grace:
                stopped.append(tid)
        self._seen = {tid: seen for tid, seen in self._seen.items() if now - seen[2] < self._grace}
        return stopped
