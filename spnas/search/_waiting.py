"""How trials wait their turn to decide, across workers and without locks.

Trials decide in trial-number order (:class:`~spnas.search.SPNASSampler`): a trial waits in
line behind the lower-numbered trials that have not decided yet, reading only the head of the
line (:meth:`WaitingLine.wait_in_line`), or only the few running trials it waits for
(:meth:`WaitingLine.sleep_until_changed`). The trial that may decide also decides for the line
behind it (:meth:`WaitingLine.decide_ahead`, written through :data:`WRITE_THREADS` threads). A
waiting trial keeps its heart beating and fails the trials of dead workers
(:meth:`WaitingLine.keep_alive`); a failure is acted on only once its retry had time to be
queued (:meth:`WaitingLine.fresh_failures`); a trial an error left undecided is failed, or
handed to the worker when the storage is down (:meth:`WaitingLine.take_unabandoned`).
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from spnas.search._config import SearchConfig
from spnas.search._liveness import BeatWatch, needs_beats, next_beat, record_beat
from spnas.search._optuna import storage_of, study_id, trial_id
from spnas.search._signals import raise_if_preempted, requeue_interrupted
from spnas.search._state import (
    DECISION_ATTR,
    KIND_ATTR,
    Decision,
    SearchState,
    TrialKind,
)
from spnas.storage import heartbeat_interval, is_heartbeat_enabled, silent_trials

_logger = logging.getLogger(__name__)

#: How often a waiting worker says what it waits for.
LOG_EVERY_S = 30.0
#: With heartbeats, Optuna fails a dead worker's trial and queues its retry in two steps;
#: a failure is acted on (counted, or its barrier decided again) only this long after it was
#: first seen, so that the retry, not a second attempt, trains the decision.
RETRY_SETTLE_S = 5.0
#: The shortest pause between two looks of a trial in line (:meth:`WaitingLine.wait_in_line`);
#: later pauses are a tenth of the time waited so far, because every look is a storage call
#: (measured at 256 workers, looks at a fixed rate were most of the storage proxy's work).
DECISION_S = 0.2
#: The most trials one decision decides ahead for (those in line behind it).
MAX_DECIDED_AHEAD = 256
#: Threads that write the decisions made ahead (one storage round trip per attribute).
WRITE_THREADS = 8


class WaitingLine:
    """The waiting side of one sampler: its looks, beats and fault bookkeeping.

    It keeps, per process, the failures seen (:meth:`fresh_failures`), the beats of running
    trials seen (storages without heartbeats) and the trials an error left undecided that
    could not be failed (:meth:`take_unabandoned`).

    Args:
        config_for: the search configuration in force for a study.
    """

    def __init__(self, config_for: Callable[[Study], SearchConfig]) -> None:
        self._config_for = config_for
        self._failures_seen: dict[int, float] = {}
        # The beats of running trials seen by this worker (storages without heartbeats).
        self._watch: BeatWatch | None = None
        # Waiting trial id -> when it last beat (keep_alive beats once a beat period).
        self._beaten: dict[int, float] = {}
        # Trials that abandon could not fail (the storage was down): see take_unabandoned.
        self._unabandoned: list[int] = []

    def take_unabandoned(self) -> list[int]:
        """Storage ids of the trials that an error left RUNNING before their objective ran,
        because failing them failed too (the storage was down); the list is emptied.

        Such a trial never beats its heart, so no worker would fail it as stale, and a trial
        behind it may already have decided for it: the caller fails it and queues its retry
        once the storage answers (:func:`~spnas.search._signals.requeue_interrupted`).
        """
        taken, self._unabandoned = self._unabandoned, []
        return taken

    def abandon(self, study: Study, trial: FrozenTrial) -> None:
        """Fail ``trial``, so that later trials need not wait for it, and queue its retry if
        it has a decision after all.

        An error here may come after the decision was written (a storage error in a later
        write, Ctrl-C) or while a worker deciding ahead wrote it: failed and not retried, such
        a trial would count as a failed attempt of its barrier, and the barrier would be
        decided, and trained, a second time.
        """
        try:
            retried = requeue_interrupted(study, trial_id(trial))
        except Exception as exc:  # the storage may be what failed: see take_unabandoned
            self._unabandoned.append(trial_id(trial))
            _logger.warning(
                "trial %d: could not mark it failed (%s: %s)", trial.number, type(exc).__name__, exc
            )
        else:
            _logger.warning(
                "trial %d: failed before its objective ran%s",
                trial.number,
                "" if retried is None else "; queued for a retry with its decision",
            )

    def wait_in_line(
        self,
        study: Study,
        trial: FrozenTrial,
        blocking: list[FrozenTrial],
        deadline: float,
        max_step: float,
    ) -> Decision | None:
        """Wait until the lower-numbered trials ``blocking`` have decided (or stopped running),
        reading one trial per look; returns ``trial``'s own decision when one of them decided
        ahead for it (:meth:`decide_ahead`), else ``None``.

        Decisions come in trial-number order, so the lowest of them decides first: it alone
        is read. It decides for the whole line at once and writes its own mark last
        (:func:`write_decisions`), so ``trial`` itself is read only once that mark is there:
        by then a decision ahead for ``trial`` is written too. Reading ``trial`` at every
        look as well doubled the polls that dominated the storage proxy's CPU after a
        barrier. The lowest one decides for the whole line, so the pause between looks does
        not grow with the length of the line: it is a tenth of the time waited so far (the
        latency stays a tenth of the wait), between :data:`DECISION_S` and ``max_step``.
        Returns early at ``deadline`` (:meth:`SPNASSampler.decide <spnas.search.SPNASSampler.decide>` then gives up); the heart beats twice
        per heartbeat interval, and the head's beat is watched (:meth:`keep_alive`): a dead
        head is failed, and the line moves on.
        """
        storage = storage_of(study)
        ahead = [trial_id(t) for t in blocking]
        began = last_log = time.monotonic()
        while True:
            read = [storage.get_trial(ahead[0])]
            if not _undecided(read[0]):
                mine = Decision.of(storage.get_trial(trial_id(trial)))
                if mine is not None:
                    return mine
                # The line stopped short of ``trial``, or its head died undecided: drop the
                # trials ahead that decided or stopped since the last look.
                ahead.pop(0)
                while ahead:
                    read.append(storage.get_trial(ahead[0]))
                    if _undecided(read[-1]):
                        break
                    ahead.pop(0)
                if not ahead:
                    return None
            now = time.monotonic()
            if now >= deadline:
                return None
            self.keep_alive(study, trial, read)
            if now - last_log >= LOG_EVERY_S:
                _logger.info("trial %d: %d trial(s) ahead decide first", trial.number, len(ahead))
                last_log = now
            pause = min(max((now - began) / 10.0, DECISION_S), max_step)
            pause_polling(pause, deadline)

    def decide_ahead(
        self,
        study: Study,
        trials: list[FrozenTrial],
        trial: FrozenTrial,
        decision: Decision,
        propose: Callable[[SearchState, int], Decision],
        replay: Callable[[Iterable[FrozenTrial]], SearchState],
    ) -> None:
        """Decide and write, for the undecided trials above ``trial`` (waiting in line for
        it), what each would decide itself right after ``trial`` took ``decision``.

        After a barrier, hundreds of trials wait in line; deciding them one by one, each with
        its own read of the whole history, made the last one wait hundreds of decisions
        (measured: 506 s at 256 workers). Each decision ahead replays the history with the
        decisions before it, as its own trial would; it stops at what the line must wait for
        (a barrier, the end of a round); once the search is done, the whole line is ``idle``.
        Queued retries and fresh failures need no check here: ``trial`` has just decided on
        the same history, and decisions ahead add no failure. The decisions are written whole,
        then marked (``spnas:kind``), and ``trial``'s own mark is written last (by
        :meth:`SPNASSampler.before_trial <spnas.search.SPNASSampler.before_trial>`): a trial
        that sees every trial below it decided finds its own decision there, and never decides
        it a second time (:func:`write_decisions`). ``propose`` decides a trial from the
        search state (the sampler's own step); ``replay`` derives the search state of a
        history (the sampler's :meth:`RecordReader.state
        <spnas.search._records.RecordReader.state>` of this look, which parses each trial once
        however many replays read it, and keeps what they derive from the history's head).
        """
        after = history_index(trials, trial.number) + 1
        line = [t for t in trials[after:] if _undecided(t) and t.number > trial.number]
        if not line:
            return
        history = {t.number: t for t in trials}
        history[trial.number] = _with_decision(trial, decision)
        ahead: list[tuple[FrozenTrial, Decision]] = []
        for waiting in line[:MAX_DECIDED_AHEAD]:
            state = replay(history.values())
            if state.done:  # final: everyone in line is idle
                ahead.append((waiting, Decision(TrialKind.IDLE, round=state.round)))
            elif state.next_kind is None:
                break
            else:
                ahead.append((waiting, propose(state, waiting.number)))
            history[waiting.number] = _with_decision(waiting, ahead[-1][1])
        if ahead:
            write_decisions(storage_of(study), ahead)
            _logger.info(
                "trial %d: decided ahead for trial(s) %d-%d",
                trial.number,
                ahead[0][0].number,
                ahead[-1][0].number,
            )

    def sleep_until_changed(
        self,
        study: Study,
        trial: FrozenTrial,
        watched: list[FrozenTrial],
        step: float,
        max_step: float,
        deadline: float = math.inf,
    ) -> float:
        """Sleep, reading only the ``watched`` trials, until one of them changed its state or
        decided; returns the next step.

        Returns early (for the full look in :meth:`SPNASSampler.decide <spnas.search.SPNASSampler.decide>`) after :data:`LOG_EVERY_S`, and
        at ``deadline``. The heart beats twice per heartbeat interval, and the watched
        trials' beats are watched (:meth:`keep_alive`): a dead worker's trial is failed.
        """
        storage = storage_of(study)
        seen = [_fingerprint(t) for t in watched]
        started = time.monotonic()
        while True:
            pause_polling(step, deadline)
            step = min(step * 1.5, max_step)
            read = [storage.get_trial(trial_id(t)) for t in watched]
            if [_fingerprint(t) for t in read] != seen:
                return step
            now = time.monotonic()
            if now - started >= LOG_EVERY_S or now >= deadline:
                return step
            self.keep_alive(study, trial, read)

    def fresh_failures(self, state: SearchState) -> list[int]:
        """Failed trials first seen less than :data:`RETRY_SETTLE_S` ago (not yet retried)."""
        now = time.monotonic()
        fresh = []
        for number in sorted(state.failures()):
            seen = self._failures_seen.setdefault(number, now)
            if now - seen < RETRY_SETTLE_S:
                fresh.append(number)
        return fresh

    def beat_interval(self, study: Study) -> float | None:
        """Seconds between two beats of a running trial: Optuna's heartbeat interval, or
        ``search.beat_seconds`` on a storage without heartbeats (:mod:`spnas.search._liveness`);
        ``None`` on an in-memory storage, which no other process shares."""
        storage = storage_of(study)
        if is_heartbeat_enabled(storage):
            return heartbeat_interval(storage)
        if needs_beats(storage):
            return self._config_for(study).search.beat_seconds
        return None

    def beat_period(self, study: Study) -> float:
        """How often a waiting trial beats (:meth:`keep_alive`): twice per interval."""
        interval = self.beat_interval(study)
        return math.inf if interval is None else interval / 2.0

    def keep_alive(
        self, study: Study, trial: FrozenTrial, seen: Iterable[FrozenTrial] = ()
    ) -> None:
        """Beat the waiting ``trial``'s heart, and fail the trials of dead workers, at most
        once per :meth:`beat_period` (the first call beats: a trial that never beat is never
        stale); ``seen`` are the trials the caller has just read.

        Optuna beats a trial's heart only while its objective runs; a trial waiting to decide
        beats its own, and fails the stale trials of dead workers so that their barriers are
        retried instead of blocking everyone. Without Optuna's heartbeats (the gRPC proxy),
        only the beats of ``seen`` are watched: a waiting trial reads what it waits for
        anyway, and a dead worker's trial blocks only the trials that wait for it. Reading
        every running trial here instead, every waiting worker at every beat, cost the
        storage proxy a read of all unfinished trials under its cache's lock each time.
        """
        now = time.monotonic()
        tid = trial_id(trial)
        period = self.beat_period(study)
        if now - self._beaten.get(tid, -math.inf) < period:
            return
        self._beaten = {t: at for t, at in self._beaten.items() if now - at < period}
        self._beaten[tid] = now
        storage = storage_of(study)
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(tid)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            # Killed before their first heartbeat: failed (and retried, if decided) likewise.
            for silent in silent_trials(storage, study_id(study)):
                # Every waiting worker finds it: only the one that fails it queues the retry.
                retried = requeue_interrupted(study, silent, claim=True)
                _logger.warning(
                    "trial id %d: running past the grace period without a heartbeat (its "
                    "process died): failed%s",
                    silent,
                    "" if retried is None else f"; trial {retried} queued for a retry",
                )
        elif needs_beats(storage):
            # No heartbeats (the gRPC proxy): beats in system attributes, watched here.
            record_beat(storage, tid, next_beat())
            self._fail_stopped(study, seen, exclude=tid)

    def _fail_stopped(self, study: Study, seen: Iterable[FrozenTrial], exclude: int) -> None:
        """Fail, and retry, the trials of ``seen`` whose beat stood still for a grace period."""
        grace = self._config_for(study).search.beat_grace_seconds
        if self._watch is None:
            self._watch = BeatWatch(grace, clock=time.monotonic)  # the line's clock
        for dead in self._watch.dead(seen, exclude=exclude):
            retried = requeue_interrupted(study, dead, claim=True)
            _logger.warning(
                "trial id %d: its beat stood still for %.0f s (its process died): failed%s",
                dead,
                grace,
                "" if retried is None else f"; trial {retried} queued for a retry",
            )


def _with_decision(trial: FrozenTrial, decision: Decision) -> FrozenTrial:
    """A copy of the running ``trial`` as the history will hold it once ``decision`` is written."""
    decided = copy.copy(trial)
    decided.system_attrs = {**trial.system_attrs, **decision.to_attrs()}
    return decided


def write_decisions(storage: Any, decisions: Sequence[tuple[FrozenTrial, Decision]]) -> None:
    """Write the decisions of the trials in line behind a decider, marks (``spnas:kind``) last.

    Other workers see a trial as decided once its mark is there. Every decision is written
    whole before any mark (a half-written one, a mark without the round, once let a second
    worker decide the same barrier), and the decider's own mark comes after all of them
    (:meth:`SPNASSampler.before_trial <spnas.search.SPNASSampler.before_trial>`): a trial that sees every lower trial decided already
    holds its own decision. Writes go through :data:`WRITE_THREADS` threads: one attribute is
    one round trip, and a line of 255 decisions written one after another took seconds
    through the storage proxy. A trial that finished meanwhile (its worker died or gave up)
    is left as it is.
    """

    def write(item: tuple[FrozenTrial, dict[str, Any]]) -> bool:
        trial, attrs = item
        try:
            for key, value in attrs.items():
                storage.set_trial_system_attr(trial_id(trial), key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    bodies = [(t, {DECISION_ATTR: d.to_attrs()[DECISION_ATTR]}) for t, d in decisions]
    marks = [(t, {KIND_ATTR: d.kind.value}) for t, d in decisions]
    with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
        whole = list(pool.map(write, bodies))
        list(pool.map(write, [mark for mark, ok in zip(marks, whole, strict=True) if ok]))


def history_index(trials: Sequence[FrozenTrial], number: int) -> int:
    """Where trial ``number`` stands in a study's ``trials`` (its history, in number order):
    Optuna numbers a study's trials 0, 1, 2 …, so at its own index, found without reading the
    others (a walk only when the history has gaps)."""
    if number < len(trials) and trials[number].number == number:
        return number
    return next(i for i, t in enumerate(trials) if t.number == number)


def pause_polling(seconds: float, deadline: float = math.inf) -> None:
    """The pause between two looks at the study: ``seconds``, not past ``deadline`` (a
    :func:`time.monotonic` time). A stop signal that arrived inside a storage read is raised
    first (:func:`~spnas.search._signals.raise_if_preempted`): the pause is a safe point."""
    raise_if_preempted()
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


def _undecided(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and Decision.of(trial) is None


def is_running_decided(trial: FrozenTrial) -> bool:
    """Running (or queued) with a decision that counts: an ``idle`` trial changes nothing."""
    if trial.state not in (TrialState.RUNNING, TrialState.WAITING):
        return False  # read first: the decisions of the finished trials are not parsed
    decision = Decision.of(trial)
    return decision is not None and decision.kind != TrialKind.IDLE


def _fingerprint(trial: FrozenTrial) -> tuple[TrialState, bool]:
    """What of ``trial`` a waiting decision depends on: its state, and whether it decided."""
    return trial.state, Decision.of(trial) is not None
