"""Preemption: SIGTERM and SIGINT end a worker cleanly, its running trial re-queued at once.

Clusters preempt with SIGTERM (SLURM, Kubernetes) and people with Ctrl-C (SIGINT). Without a
handler the worker dies and its trial stays RUNNING until the heartbeat grace period (600 s)
makes it stale; only then is it retried. With :func:`preemption_signals` active, the first
signal raises :class:`Preempted` in the main thread. Optuna marks the running trial FAIL (it
treats ``KeyboardInterrupt`` subclasses as failures, then re-raises them), and
:func:`requeue_interrupted` queues its retry with Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (as a stale trial's), so that the next worker to ask for a
trial trains the same decision at once. Later signals are ignored while the worker winds
down.

An exception raised by a signal handler is lost when the signal arrives while Python runs a
finalizer or a callback whose exceptions are only printed (a garbage-collected connection,
say). The signal is therefore also remembered, and :func:`raise_if_preempted` raises it again
at safe points: every training progress report and every turn of the worker loop. While
Optuna hands a new trial over (:func:`defer_stop_signals`), a signal is only remembered, and
raised where the trial is known and can be failed (:func:`accept_stop_signals`).

Nor is it raised inside the storage's code (SQLAlchemy, the database drivers, Optuna's
storages, gRPC): there it ends a statement half-way, and SQLAlchemy invalidates a connection
whose cursor the exception's traceback keeps alive. On SQLite that connection keeps the
database's lock, and the writes that follow at once (failing and re-queueing the trial) wait
behind it for the whole busy timeout (120 s): two workers stopped inside a poll and a commit
hung ``spnas search`` past its stop timeout (seen in a test loop). Such a signal is remembered
and raised at the next safe point: the waits' pauses between polls, the progress reports, the
worker loop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from types import FrameType

import optuna
from optuna.trial import TrialState

from spnas.search._optuna import storage_of
from spnas.search._state import Decision, retried_numbers

_logger = logging.getLogger(__name__)

#: The signals a worker (and ``spnas search``) treats as "stop now, resume later".
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class Preempted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signal received while :func:`preemption_signals` is active (at most one).
_received: list[int] = []
#: Whether a stop signal is only remembered for now (:func:`defer_stop_signals`).
_deferred: list[bool] = [False]
#: The signal that stopped the last worker of this process (kept after it stopped).
_stopped: list[int] = []


def stopped_by() -> int | None:
    """The signal that stopped this process's last worker (:func:`preemption_signals` or
    :func:`stop_before_joining`), else ``None``: ``spnas worker`` then exits ``128 + signal``
    (143 for SIGTERM), so that a scheduler reads "stopped, run me again", not "done"."""
    return _stopped[0] if _stopped else None


def _remember(signum: int) -> None:
    _received.append(signum)
    _stopped[:] = [signum]


#: Modules whose code a stop signal must not interrupt (see the module docstring).
_STORAGE_MODULES = ("sqlalchemy.", "sqlite3", "psycopg2", "optuna.storages", "grpc")


def in_storage_code(frame: FrameType | None) -> bool:
    """Whether ``frame`` (where a signal arrived) or one of its callers runs storage code."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


def raise_if_preempted() -> None:
    """Raise :class:`Preempted` when a stop signal was received (see the module docstring)."""
    if _received:
        raise Preempted(_received[0])


def defer_stop_signals() -> None:
    """From now until :func:`accept_stop_signals`, a stop signal is remembered, not raised.

    Between Optuna's creating a trial (or taking a queued one) and the code that fails it when
    interrupted — the sampler, for a trial that waits to decide; the worker's objective, for
    a decided one — nothing knows the trial: a signal raised there left it RUNNING, and every
    later trial waited in line behind it until the heartbeat grace period (seen in CI: an
    undecided trial RUNNING after ``spnas search`` was stopped).
    """
    _deferred[0] = True


def accept_stop_signals() -> bool:
    """End :func:`defer_stop_signals`, raising :class:`Preempted` now for a signal received
    meanwhile; whether signals were deferred."""
    deferred, _deferred[0] = _deferred[0], False
    raise_if_preempted()
    return deferred


def stop_before_joining(signum: int, frame: object) -> None:
    """Signal handler for a worker's start-up (loading torch, the study, checking inputs):
    stop like Ctrl-C, no trial being there to re-queue, and remember the signal.

    The ``KeyboardInterrupt`` is lost when the signal arrives while Python runs a finalizer
    (seen in CI: "Exception ignored in WeakKeyDictionary…"); remembered, the signal is raised
    again by :func:`raise_if_preempted` at the worker loop's first turn, so a worker stopped
    during its start-up never goes on to run the search.
    """
    if not _received:
        _remember(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def preemption_signals() -> Iterator[None]:
    """While active, the first SIGTERM or SIGINT raises :class:`Preempted` (and
    :func:`raise_if_preempted` raises it again); later ones are ignored. The previous handlers
    are restored on exit. Outside the main thread (where Python cannot install handlers) this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _received:
            return
        _remember(signum)
        if not _deferred[0] and not in_storage_code(frame):
            raise Preempted(signum)

    if not _received:  # no signal pending from the start-up: a fresh worker
        _stopped.clear()
    _deferred[0] = False

    previous = {sig: signal.signal(sig, handler) for sig in PREEMPTION_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _received.clear()
        _deferred[0] = False


def requeue_interrupted(
    study: optuna.Study, trial_id: int | None, *, claim: bool = False
) -> int | None:
    """Fail the trial a preempted worker was running (when still RUNNING) and queue its retry.

    Nothing is queued for a trial that finished anyway, has no decision yet (undecided trials
    need no retry), was already retried (declared stale by another worker), or no longer
    exists: a database that lost its last commits in a crash or a fail-over (asynchronous
    commit or replication) may have lost the trial's creation, and then its decision too.
    With ``claim``, the retry is queued only when this call is the one that failed the trial:
    several watchers that find the same dead trial queue one retry, not one each.

    Returns:
        The number of the interrupted trial when a retry was queued, else ``None``.
    """
    if trial_id is None:
        return None
    storage = storage_of(study)
    try:
        trial = storage.get_trial(trial_id)
    except KeyError:  # Optuna's "Record does not exist."
        _logger.warning("trial id %d is not in the storage any more: nothing to retry", trial_id)
        return None
    failed_here = False
    if trial.state == TrialState.RUNNING:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            failed_here = storage.set_trial_state_values(trial_id, TrialState.FAIL)
        trial = storage.get_trial(trial_id)
    if claim and not failed_here:
        return None
    if trial.state != TrialState.FAIL or Decision.of(trial) is None:
        return None
    trials = study.get_trials(deepcopy=False)
    if trial.number in retried_numbers(trials):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
    return trial.number
