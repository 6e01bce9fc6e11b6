"""SPNASSampler: SP-NAS (paper Algorithm 1) as an Optuna sampler."""

from __future__ import annotations

import concurrent.futures
import copy
import datetime
import logging
import math
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from spnas.arch import ParallelCode
from spnas.exceptions import ConfigError
from spnas.search._config import CONFIG_ATTR, SearchConfig
from spnas.search._liveness import BeatWatch, needs_beats, next_beat, record_beat
from spnas.search._optuna import in_optimize_loop, storage_of, study_id, trial_id, whole_study
from spnas.search._params import architecture_distributions, record_architecture
from spnas.search._proposals import SearchExhausted, propose_parallel, propose_serial
from spnas.search._signals import requeue_interrupted
from spnas.search._state import DECISION_ATTR, KIND_ATTR, Decision, SearchState, TrialKind
from spnas.storage import heartbeat_interval, is_heartbeat_enabled, silent_trials

_logger = logging.getLogger(__name__)

#: Longest pause between two looks at the study while a decision waits.
MAX_WAIT_STEP_S = 10.0
#: How often a waiting worker says what it waits for.
LOG_EVERY_S = 30.0
#: With heartbeats, Optuna fails a dead worker's trial and queues its retry in two steps;
#: a failure is acted on (counted, or its barrier decided again) only this long after it was
#: first seen, so that the retry, not a second attempt, trains the decision.
RETRY_SETTLE_S = 5.0
#: The shortest pause between two looks of a trial in line (:meth:`SPNASSampler._wait_in_line`);
#: later pauses are a tenth of the time waited so far, because every look is a storage call
#: (measured at 256 workers, looks at a fixed rate were most of the storage proxy's work).
DECISION_S = 0.2
#: A trial that waits on at most this many running trials (a barrier, the end of a round)
#: reads only them, at least every MAX_WATCH_STEP_S, instead of the whole history.
MAX_WATCHED = 4
#: The most trials one decision decides ahead for (those in line behind it).
MAX_DECIDED_AHEAD = 256
#: Threads that write the decisions made ahead (one storage round trip per attribute).
WRITE_THREADS = 8
MAX_WATCH_STEP_S = 1.0


class SPNASSampler(BaseSampler):
    """Decides what every trial trains: SP-NAS's serial and parallel search.

    The sampler is stateless across processes. In :meth:`before_trial` it derives the search
    state from the study's trials (:meth:`SearchState.from_trials`) and writes the trial's
    decision into its system attributes (``spnas:decision``, then ``spnas:kind``; see
    :class:`~spnas.search.Decision`), where :class:`~spnas.search.Objective`
    (or your own objective, via :func:`~spnas.search.get_decision`) reads it. A trial that
    already carries a decision — a retry of a failed trial, or one you enqueued with system
    attributes — keeps it.

    Concurrency without locks: a trial decides only once every lower-numbered running trial
    has decided, so decisions happen in trial-number order across all workers, and a barrier
    (``seed``, ``reignite``, ``parallel_seed``, ``final``) is decided exactly once. Trials
    that must wait (a barrier is running, or a round is draining) wait inside
    :meth:`before_trial`, keeping their heartbeat alive and logging what they wait for. A
    waiting trial reads only what it waits for (the lowest undecided trial below it, or the
    few running trials of a barrier), not the whole history: with hundreds of workers in line
    after a barrier, full reads at every look grew with the square of their number. The
    trial that may decide also decides for the line behind it, each trial as it would have
    decided itself, so hundreds of waiting workers start together instead of one decision
    (one history read) after another.

    Ask-and-tell: a trial asked outside :meth:`optuna.Study.optimize` (``study.ask()``) waits
    at most ``ask_wait_seconds``; if it still may not decide (a barrier is running, a round is
    draining), it gets the kind ``idle``: tell it pruned and ask again once a running trial is
    told. One thread can so run a whole search with ``ask``/``tell`` alone.

    The architecture is also written as trial params with fixed distributions (``blocks``,
    ``stages``, ``blocks_s1`` …, ``doublings``, ``subnets_s1`` …, ``subnets``, ``gmacs``; see
    :mod:`spnas.search._params`), so Optuna's importance and slice plots and
    ``trials_dataframe()`` show it. Inside :meth:`optuna.Study.optimize`, the sampler calls
    :meth:`optuna.Study.stop` as soon as the search is done (or has failed), so
    ``study.optimize(objective, n_trials=N)`` ends there instead of idling through the rest.

    Trials are ranked (better, best, stuck) by the study's own direction
    (``study.direction``). The config metric's direction (``config.direction``: ``AP`` is to
    maximize, ``LAMR`` to minimize) only sets up the studies spnas creates
    (:func:`~spnas.search.create_search_study`); a study made to the other direction is
    searched as it says, with a warning logged once per sampler and study.

    A study with several objectives is refused where Optuna's single-objective samplers
    refuse it (:class:`~optuna.samplers.CmaEsSampler`): :meth:`sample_relative` and
    :meth:`sample_independent` raise a :class:`~spnas.exceptions.ConfigError` (a
    ``ValueError``) naming the study; :meth:`before_trial` does too, since a decision needs a
    single value to rank, and fails the trial undecided.

    Parameters your objective suggests itself (``trial.suggest_float("lr", …)``) go to
    ``fallback_sampler``.

    Args:
        config: the search configuration; by default read from the study's user attribute
            ``spnas:config`` (which ``spnas search`` stores).
        fallback_sampler: samples the objective's own parameters (TPE by default).
        seed: seed of the fallback sampler. Proposals are seeded by
            ``config.search.seed`` and the trial number, so any worker proposes alike.
        max_wait_seconds: give up waiting after this long (``None``: wait as long as needed);
            the trial then gets the kind ``idle`` and is pruned.
        ask_wait_seconds: the longest wait of a trial asked outside ``study.optimize``
            (ask-and-tell), after which it gets the kind ``idle``.

    Example::

        study = optuna.create_study(direction="maximize", sampler=SPNASSampler(config))
        study.optimize(my_objective, n_trials=100)    # see spnas.search.get_decision
    """

    def __init__(
        self,
        config: SearchConfig | Mapping[str, Any] | None = None,
        *,
        fallback_sampler: BaseSampler | None = None,
        seed: int | None = None,
        max_wait_seconds: float | None = None,
        ask_wait_seconds: float = 1.0,
    ) -> None:
        if config is not None and not isinstance(config, SearchConfig):
            config = SearchConfig.from_dict(config)
        self._config: SearchConfig | None = config
        self._fallback = fallback_sampler or TPESampler(seed=seed)
        self._max_wait = max_wait_seconds
        self._ask_wait = ask_wait_seconds
        self._failures_seen: dict[int, float] = {}
        # The beats of running trials seen by this worker (storages without heartbeats).
        self._watch: BeatWatch | None = None
        # Trials that _abandon could not fail (the storage was down): see take_unabandoned.
        self._unabandoned: list[int] = []
        # Per study (see _study_key): its one direction, and whether check_study passed
        # (warned about a direction other than the config's, named the objective). A study's
        # directions never change: one storage read per study, not one per trial or suggest.
        self._directions: dict[tuple[int, int, str], str] = {}
        self._checked: set[tuple[int, int, str]] = set()

    def __getstate__(self) -> dict[str, Any]:
        # The per-study caches are keyed by the storage object's id: meaningless elsewhere.
        state = self.__dict__.copy()
        state["_directions"], state["_checked"] = {}, set()
        return state

    # ------------------------------------------------------------ the user's parameters
    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        space = self._fallback.infer_relative_search_space(study, trial)
        # The architecture params are decided here, never sampled by the fallback.
        ours = architecture_distributions(self.config_for(whole_study(study)))
        return {name: d for name, d in space.items() if name not in ours}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self.study_direction(study)  # refuses a multi-objective study, as CmaEsSampler does
        return self._fallback.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self.study_direction(study)  # refuses a multi-objective study, as CmaEsSampler does
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._fallback.after_trial(study, trial, state, values)
        study = whole_study(study)
        if not in_optimize_loop(study) or Decision.of(trial) is None:
            return
        # Called before Optuna stores the trial's result: replay the history as it will be.
        finished = copy.copy(trial)
        finished.state = state
        finished.values = values
        finished.datetime_complete = datetime.datetime.now()
        trials = [
            finished if t.number == trial.number else t for t in study.get_trials(deepcopy=False)
        ]
        search = SearchState.from_trials(
            trials, self.config_for(study), self.study_direction(study)
        )
        if search.done:
            _logger.info("the search is %s: stopping study %r", search.phase, study.study_name)
            study.stop()

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ------------------------------------------------------------ the architecture
    def config_for(self, study: Study) -> SearchConfig:
        """The configuration in force for ``study``."""
        if self._config is None:
            values = study.user_attrs.get(CONFIG_ATTR)
            if values is None:
                raise ConfigError(
                    f"study {study.study_name!r} has no '{CONFIG_ATTR}' user attribute: create "
                    "it with `spnas search`, or pass a config to SPNASSampler"
                )
            self._config = SearchConfig.from_dict(values)
        return self._config

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._fallback.before_trial(study, trial)
        study = whole_study(study)
        decision = Decision.of(trial)
        if decision is not None:
            self.check_study(study)
            earlier = _earlier_retry(study, trial)
            if earlier is not None:
                self._stand_down(study, trial, decision, earlier)
                return
            # A retry copied its params; a trial enqueued with a decision has none yet.
            record_architecture(storage_of(study), trial, self.config_for(study), decision)
            return
        try:
            self.check_study(study)
            decision, written = self._decide(study, trial)
            if not written:
                # Two writes, each its own transaction, in to_attrs' order: ``spnas:kind``
                # goes last, so other workers see no decision (and wait) until the whole
                # decision is there (see _write_decisions).
                for key, value in decision.to_attrs().items():
                    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)
            record_architecture(storage_of(study), trial, self.config_for(study), decision)
        except BaseException:
            # Trials decide in number order: an undecided trial left RUNNING (a storage
            # error, Ctrl-C while waiting) would hold every later decision until it went stale.
            self._abandon(study, trial)
            raise
        _logger.info(
            "trial %d: %s%s%s%s",
            trial.number,
            decision.kind,
            f" {decision.arch}" if decision.arch is not None else "",
            f" {decision.parallel}" if decision.parallel is not None else "",
            f" from trial {decision.parent} by {'; '.join(decision.ops)}" if decision.ops else "",
        )

    def check_study(self, study: Study) -> None:
        """Refuse a study that SP-NAS cannot search (several objectives); warn, once per
        study, when its direction is not the config metric's (it is searched to its own
        direction: its best trial is then the network the metric calls worst). Name the
        study's objective after the metric (``AP``…) if it has no name yet, so plots and the
        dashboard say "AP", not "Objective 0". Done once per study: later calls cost nothing.

        Raises:
            ConfigError: a multi-objective study (:meth:`study_direction`).
        """
        direction = self.study_direction(study)
        key = _study_key(study)
        if key in self._checked:
            return
        config = self.config_for(study)
        if direction != config.direction:
            _logger.warning(
                "study %r is to %s, but its config's metric data.metric=%r is to %s: "
                "SPNASSampler ranks the trials to %s, as the study says (create the study "
                "with direction=%r to search for the best %s)",
                study.study_name,
                direction,
                config.data.metric,
                config.direction,
                direction,
                config.direction,
                config.data.metric,
            )
        if study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([config.data.metric])
        self._checked.add(key)

    def study_direction(self, study: Study) -> str:
        """The direction of ``study``'s one objective (``maximize``/``minimize``): trials are
        ranked by it. Read once per study.

        Raises:
            ConfigError: (a ``ValueError``, as Optuna's single-objective samplers raise) when
                the study has several objectives, naming the study and its directions.
        """
        study = whole_study(study)
        key = _study_key(study)
        direction = self._directions.get(key)
        if direction is None:
            directions = [d.name.lower() for d in study.directions]
            if len(directions) != 1:
                metric = (
                    f", the metric {self._config.data.metric!r}" if self._config is not None else ""
                )
                raise ConfigError(
                    f"study {study.study_name!r} has {len(directions)} objectives "
                    f"({', '.join(directions)}): SPNASSampler cannot be used for "
                    f"multi-objective optimization; it searches one objective{metric}"
                )
            direction = self._directions[key] = directions[0]
        return direction

    @staticmethod
    def _stand_down(study: Study, trial: FrozenTrial, decision: Decision, earlier: int) -> None:
        """Turn a second retry of the same failed trial ``idle``: ``earlier`` runs it."""
        # The mark goes first here: from that write on no worker counts the copy as a
        # running barrier; the fields only clear what the copy carried.
        attrs = Decision(TrialKind.IDLE, round=decision.round).to_attrs()
        storage = storage_of(study)
        for key in (KIND_ATTR, DECISION_ATTR):
            storage.set_trial_system_attr(trial_id(trial), key, attrs[key])
        _logger.info(
            "trial %d: idle, a second retry of the trial that trial %d retries",
            trial.number,
            earlier,
        )

    def take_unabandoned(self) -> list[int]:
        """Storage ids of the trials that an error left RUNNING before their objective ran,
        because failing them failed too (the storage was down); the list is emptied.

        Such a trial never beats its heart, so no worker would fail it as stale, and a trial
        behind it may already have decided for it: the caller fails it and queues its retry
        once the storage answers (:func:`~spnas.search._signals.requeue_interrupted`).
        """
        taken, self._unabandoned = self._unabandoned, []
        return taken

    def _abandon(self, study: Study, trial: FrozenTrial) -> None:
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

    def decide(self, study: Study, trial: FrozenTrial) -> Decision:
        """Wait until ``trial`` may decide, then decide (see the class docstring).

        The decision is returned, not written; a decision that a lower-numbered trial
        already wrote for ``trial`` (deciding ahead) is returned as it is.
        """
        return self._decide(study, trial)[0]

    def _decide(self, study: Study, trial: FrozenTrial) -> tuple[Decision, bool]:
        """:meth:`decide`, and whether the decision is already written on ``trial``."""
        config = self.config_for(study)
        direction = self.study_direction(study)
        started = time.monotonic()
        last_log: float | None = None
        max_step = MAX_WAIT_STEP_S
        interval = self._beat_interval(study)
        heartbeat = interval is not None
        if interval is not None:
            # A waiting trial beats its own heart (_keep_alive): it must look at least once
            # per heartbeat interval, or other workers fail it as stale.
            max_step = min(max_step, interval)
        step = min(config.search.wait_seconds, max_step)
        max_wait = self._max_wait if self._max_wait is not None else math.inf
        if not in_optimize_loop(study):
            max_wait = min(max_wait, self._ask_wait)
        reason: str | None = None
        while True:
            trials = study.get_trials(deepcopy=False)
            mine = Decision.of(next(t for t in trials if t.number == trial.number))
            if mine is not None:  # a lower-numbered trial decided ahead for this one
                return mine, True
            blocking = [
                t
                for t in trials
                if t.number < trial.number
                and t.state == TrialState.RUNNING
                and Decision.of(t) is None
            ]
            # What this wait is for, when a few trials say it: they alone are read until one
            # of them changes, instead of the whole history at every look.
            watched: list[FrozenTrial] = []
            if blocking:
                reason = f"waiting for trial(s) {[t.number for t in blocking[:5]]} to decide first"
            else:
                state = SearchState.from_trials(trials, config, direction)
                fresh = self._fresh_failures(state) if heartbeat else []
                if fresh:
                    reason = f"waiting for the retry of failed trial(s) {fresh[:5]}, if any"
                elif state.done:
                    if in_optimize_loop(study):
                        study.stop()
                    idle = Decision(TrialKind.IDLE, round=state.round)
                    self._decide_ahead(study, trials, trial, idle)
                    return idle, False
                elif state.next_kind is not None:
                    decision = self._decision(state, trial.number)
                    self._decide_ahead(study, trials, trial, decision)
                    return decision, False
                else:
                    reason = state.waiting_for
                    running = [t for t in trials if _is_running_decided(t)]
                    if len(running) <= MAX_WATCHED:
                        watched = running
                queued = [
                    t.number
                    for t in trials
                    if t.state == TrialState.WAITING and Decision.of(t) is not None
                ]
                if queued and not fresh:
                    # A retry of a dead worker's trial waits in the queue, and what we wait for
                    # may be that very retry: step aside, so that this worker's next trial
                    # takes it from the queue, instead of every worker waiting for it forever.
                    _logger.info(
                        "trial %d: stepping aside for queued trial(s) %s", trial.number, queued
                    )
                    return Decision(TrialKind.IDLE, round=state.round), False
            now = time.monotonic()
            if now - started >= max_wait:
                # Expected in ask-and-tell (ask again later); worth a warning in a worker.
                _logger.log(
                    logging.WARNING if in_optimize_loop(study) else logging.INFO,
                    "trial %d: idle after %.1f s %s",
                    trial.number,
                    now - started,
                    reason,
                )
                return Decision(TrialKind.IDLE), False
            if last_log is None or now - last_log >= LOG_EVERY_S:
                _logger.info("trial %d: %s", trial.number, reason)
                last_log = now
            self._keep_alive(study, trial)
            deadline = started + max_wait
            if blocking:
                mine = self._wait_in_line(study, trial, blocking, deadline, max_step)
                if mine is not None:
                    return mine, True
                continue
            if watched:
                step = self._sleep_until_changed(
                    study, trial, watched, step, min(max_step, MAX_WATCH_STEP_S), deadline
                )
                continue
            time.sleep(max(0.0, min(step, deadline - now)))
            step = min(step * 1.5, max_step)

    def _wait_in_line(
        self,
        study: Study,
        trial: FrozenTrial,
        blocking: list[FrozenTrial],
        deadline: float,
        max_step: float,
    ) -> Decision | None:
        """Wait until the lower-numbered trials ``blocking`` have decided (or stopped running),
        reading one trial per look; returns ``trial``'s own decision when one of them decided
        ahead for it (:meth:`_decide_ahead`), else ``None``.

        Decisions come in trial-number order, so the lowest of them decides first: it alone
        is read. It decides for the whole line at once and writes its own mark last
        (:func:`_write_decisions`), so ``trial`` itself is read only once that mark is there:
        by then a decision ahead for ``trial`` is written too. Reading ``trial`` at every
        look as well doubled the polls that dominated the storage proxy's CPU after a
        barrier. The lowest one decides for the whole line, so the pause between looks does
        not grow with the length of the line: it is a tenth of the time waited so far (the
        latency stays a tenth of the wait), between :data:`DECISION_S` and ``max_step``.
        Returns early at ``deadline`` (:meth:`decide` then gives up); the heart beats twice
        per heartbeat interval.
        """
        storage = storage_of(study)
        ahead = [trial_id(t) for t in blocking]
        beat = self._beat_period(study)
        began = last_log = time.monotonic()
        last_beat = -math.inf  # the first look beats: a trial that never beat is never stale
        while True:
            if not _undecided(storage.get_trial(ahead[0])):
                mine = Decision.of(storage.get_trial(trial_id(trial)))
                if mine is not None:
                    return mine
                # The line stopped short of ``trial``, or its head died undecided: drop the
                # trials ahead that decided or stopped since the last look.
                ahead.pop(0)
                while ahead and not _undecided(storage.get_trial(ahead[0])):
                    ahead.pop(0)
                if not ahead:
                    return None
            now = time.monotonic()
            if now >= deadline:
                return None
            if now - last_beat >= beat:
                self._keep_alive(study, trial)
                last_beat = now
            if now - last_log >= LOG_EVERY_S:
                _logger.info("trial %d: %d trial(s) ahead decide first", trial.number, len(ahead))
                last_log = now
            pause = min(max((now - began) / 10.0, DECISION_S), max_step)
            time.sleep(max(0.0, min(pause, deadline - now)))

    def _decide_ahead(
        self, study: Study, trials: list[FrozenTrial], trial: FrozenTrial, decision: Decision
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
        then marked (``spnas:kind``), and ``trial``'s own mark is written last (by :meth:`before_trial`): a trial that sees
        every trial below it decided finds its own decision there, and never decides it a
        second time (:func:`_write_decisions`).
        """
        line = [t for t in trials if t.number > trial.number and _undecided(t)]
        if not line:
            return
        config = self.config_for(study)
        direction = self.study_direction(study)
        history = {t.number: t for t in trials}
        history[trial.number] = _with_decision(trial, decision)
        ahead: list[tuple[FrozenTrial, Decision]] = []
        for waiting in line[:MAX_DECIDED_AHEAD]:
            state = SearchState.from_trials(list(history.values()), config, direction)
            if state.done:  # final: everyone in line is idle
                ahead.append((waiting, Decision(TrialKind.IDLE, round=state.round)))
            elif state.next_kind is None:
                break
            else:
                ahead.append((waiting, self._decision(state, waiting.number)))
            history[waiting.number] = _with_decision(waiting, ahead[-1][1])
        if ahead:
            _write_decisions(storage_of(study), ahead)
            _logger.info(
                "trial %d: decided ahead for trial(s) %d-%d",
                trial.number,
                ahead[0][0].number,
                ahead[-1][0].number,
            )

    def _sleep_until_changed(
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

        Returns early (for the full look in :meth:`decide`) after :data:`LOG_EVERY_S`, and
        at ``deadline``. Dead workers' trials still go stale: the heart beats
        (:meth:`_keep_alive`) twice per heartbeat interval.
        """
        storage = storage_of(study)
        seen = [_fingerprint(t) for t in watched]
        beat = self._beat_period(study)
        started = last_beat = time.monotonic()
        while True:
            time.sleep(max(0.0, min(step, deadline - time.monotonic())))
            step = min(step * 1.5, max_step)
            if [_fingerprint(storage.get_trial(trial_id(t))) for t in watched] != seen:
                return step
            now = time.monotonic()
            if now - started >= LOG_EVERY_S or now >= deadline:
                return step
            if now - last_beat >= beat:
                self._keep_alive(study, trial)
                last_beat = now

    def _fresh_failures(self, state: SearchState) -> list[int]:
        """Failed trials first seen less than :data:`RETRY_SETTLE_S` ago (not yet retried)."""
        now = time.monotonic()
        fresh = []
        for record in state.records:
            if record.state == TrialState.FAIL:
                seen = self._failures_seen.setdefault(record.number, now)
                if now - seen < RETRY_SETTLE_S:
                    fresh.append(record.number)
        return fresh

    def _beat_interval(self, study: Study) -> float | None:
        """Seconds between two beats of a running trial: Optuna's heartbeat interval, or
        ``search.beat_seconds`` on a storage without heartbeats (:mod:`spnas.search._liveness`);
        ``None`` on an in-memory storage, which no other process shares."""
        storage = storage_of(study)
        if is_heartbeat_enabled(storage):
            return heartbeat_interval(storage)
        if needs_beats(storage):
            return self.config_for(study).search.beat_seconds
        return None

    def _beat_period(self, study: Study) -> float:
        """How often a waiting trial beats (:meth:`_keep_alive`): twice per interval."""
        interval = self._beat_interval(study)
        return math.inf if interval is None else interval / 2.0

    def _keep_alive(self, study: Study, trial: FrozenTrial) -> None:
        # Optuna beats a trial's heart only while its objective runs; a trial waiting here
        # beats its own, and fails the stale trials of dead workers so that their barriers
        # are retried instead of blocking everyone.
        storage = storage_of(study)
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial_id(trial))
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
            record_beat(storage, trial_id(trial), next_beat())
            if self._watch is None:
                self._watch = BeatWatch(self.config_for(study).search.beat_grace_seconds)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            for dead in self._watch.dead(running, exclude=trial_id(trial)):
                retried = requeue_interrupted(study, dead, claim=True)
                _logger.warning(
                    "trial id %d: its beat stood still for %.0f s (its process died): failed%s",
                    dead,
                    self.config_for(study).search.beat_grace_seconds,
                    "" if retried is None else f"; trial {retried} queued for a retry",
                )

    def _decision(self, state: SearchState, number: int) -> Decision:
        config = state.config
        rng = random.Random(f"{config.search.seed}:{number}")
        kind = state.next_kind
        parent = state.parent
        if state.pending is not None:
            # verify, control and re-evaluation: the state fixes the whole decision.
            return state.pending
        try:
            if kind == TrialKind.SERIAL:
                return propose_serial(state, rng)
            if kind == TrialKind.PARALLEL:
                return propose_parallel(state, rng)
        except SearchExhausted as exc:
            _logger.info("trial %d: %s; ending the %s", number, exc, state.phase)
            parallel = (
                ParallelCode.zeros(parent.arch.num_stages)
                if kind == TrialKind.PARALLEL and parent
                else None
            )
            return Decision(
                TrialKind.EXHAUSTED,
                arch=parent.arch if parent else None,
                parallel=parallel,
                round=state.round,
            )
        if kind == TrialKind.SEED:
            return Decision(TrialKind.SEED, arch=config.seed_arch, round=0)
        assert parent is not None, kind
        if kind == TrialKind.REIGNITE:
            return Decision(
                TrialKind.REIGNITE, arch=parent.arch, parent=parent.number, round=state.round
            )
        if kind == TrialKind.PARALLEL_SEED:
            zeros = ParallelCode.zeros(parent.arch.num_stages)
            return Decision(
                TrialKind.PARALLEL_SEED, arch=parent.arch, parallel=zeros, parent=parent.number
            )
        if kind == TrialKind.FINAL:
            return Decision(
                TrialKind.FINAL, arch=parent.arch, parallel=parent.parallel, parent=parent.number
            )
        raise ConfigError(f"unknown trial kind {kind!r}")


def _study_key(study: Study) -> tuple[int, int, str]:
    """Tells studies apart within one process: the storage object, the study's id and name."""
    return id(storage_of(study)), study_id(study), study.study_name


def _earlier_retry(study: Study, trial: FrozenTrial) -> int | None:
    """The number of an earlier trial that retries the same failed trial as ``trial``.

    Two workers can fail the same stale trial at once (on a SQLite storage not opened by
    :func:`~spnas.storage.make_storage`, which has no row locks and no atomic claims, both see
    it RUNNING) and each queues a retry. Trial numbers are given at creation, so
    "the lowest-numbered retry runs, the others stand down" needs no lock: the earlier copy
    exists before the later one is taken from the queue.
    """
    history = trial.system_attrs.get("retry_history") or []
    if not history:
        return None
    for other in study.get_trials(deepcopy=False):
        if other.number >= trial.number:
            break
        if (other.system_attrs.get("retry_history") or [])[-1:] == history[-1:]:
            return other.number
    return None


def _with_decision(trial: FrozenTrial, decision: Decision) -> FrozenTrial:
    """A copy of the running ``trial`` as the history will hold it once ``decision`` is written."""
    decided = copy.copy(trial)
    decided.system_attrs = {**trial.system_attrs, **decision.to_attrs()}
    return decided


def _write_decisions(storage: Any, decisions: Sequence[tuple[FrozenTrial, Decision]]) -> None:
    """Write the decisions of the trials in line behind a decider, marks (``spnas:kind``) last.

    Other workers see a trial as decided once its mark is there. Every decision is written
    whole before any mark (a half-written one, a mark without the round, once let a second
    worker decide the same barrier), and the decider's own mark comes after all of them
    (:meth:`SPNASSampler.before_trial`): a trial that sees every lower trial decided already
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


def _undecided(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and Decision.of(trial) is None


def _is_running_decided(trial: FrozenTrial) -> bool:
    """Running (or queued) with a decision that counts: an ``idle`` trial changes nothing."""
    decision = Decision.of(trial)
    return (
        trial.state in (TrialState.RUNNING, TrialState.WAITING)
        and decision is not None
        and decision.kind != TrialKind.IDLE
    )


def _fingerprint(trial: FrozenTrial) -> tuple[TrialState, bool]:
    """What of ``trial`` a waiting decision depends on: its state, and whether it decided."""
    return trial.state, Decision.of(trial) is not None


def get_decision(trial: optuna.Trial | FrozenTrial) -> Decision:
    """The SP-NAS decision of ``trial`` (inside an objective run with :class:`SPNASSampler`).

    Raises:
        ConfigError: when the trial has no decision (the study does not use SPNASSampler).
    """
    if isinstance(trial, FrozenTrial):
        attrs = trial.system_attrs
    else:
        attrs = storage_of(trial.study).get_trial_system_attrs(trial_id(trial))
    decision = Decision.from_attrs(attrs)
    if decision is None:
        raise ConfigError(f"trial {trial.number} has no SP-NAS decision: use SPNASSampler")
    return decision
