"""SPNASSampler: SP-NAS (paper Algorithm 1) as an Optuna sampler."""

from __future__ import annotations

import copy
import dataclasses
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
from spnas.search._optuna import in_optimize_loop, storage_of, study_id, trial_id, whole_study
from spnas.search._params import architecture_distributions, record_architecture
from spnas.search._proposals import SearchExhausted, propose_parallel, propose_serial
from spnas.search._records import RecordCache, RecordReader
from spnas.search._signals import accept_stop_signals, defer_stop_signals
from spnas.search._state import (
    DECISION_ATTR,
    KIND_ATTR,
    Decision,
    SearchState,
    TrialKind,
)
from spnas.search._waiting import (
    LOG_EVERY_S,
    WaitingLine,
    history_index,
    is_running_decided,
    pause_polling,
)

_logger = logging.getLogger(__name__)

#: Longest pause between two looks at the study while a decision waits.
MAX_WAIT_STEP_S = 10.0
#: A trial that waits on at most this many running trials (a barrier, the end of a round)
#: reads only them, at least every MAX_WATCH_STEP_S, instead of the whole history.
MAX_WATCHED = 4
MAX_WATCH_STEP_S = 1.0


@dataclasses.dataclass(frozen=True)
class _Look:
    """What one look at the study found (:meth:`SPNASSampler._look`): ``trial``'s decision
    (``written`` when a trial below wrote it ahead), or why it waits and what it reads
    meanwhile: the undecided trials ahead of it in line, or the few running ones it waits for;
    ``read`` are the trials this look read, whose beats the waiting trial watches
    (:meth:`~spnas.search._waiting.WaitingLine.keep_alive`).
    """

    decision: Decision | None = None
    written: bool = False
    reason: str = ""
    blocking: list[FrozenTrial] = dataclasses.field(default_factory=list)
    watched: list[FrozenTrial] = dataclasses.field(default_factory=list)
    read: Sequence[FrozenTrial] = ()


class SPNASSampler(BaseSampler):
    """Decides what every trial trains: SP-NAS's serial and parallel search.

    The sampler is stateless across processes. In :meth:`before_trial` it derives the search
    state from the study's trials (:meth:`SearchState.from_trials`; the records of finished
    trials, which cannot change, are parsed once per sampler: :mod:`spnas.search._records`,
    so a decision parses only what is new or still running) and writes the trial's
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
        # The waiting protocol: looks, beats, decisions ahead, fault bookkeeping.
        self._line = WaitingLine(self.config_for)
        # Per study (see _study_key): its one direction, and whether check_study passed
        # (warned about a direction other than the config's, named the objective). A study's
        # directions never change: one storage read per study, not one per trial or suggest.
        self._directions: dict[tuple[int, int, str], str] = {}
        self._checked: set[tuple[int, int, str]] = set()
        # Per study: the records of its finished trials, parsed once (their decisions are
        # replayed at every decision).
        self._records = RecordCache()
        # Per study: the search state as the last trial that ended here left it (after_trial).
        self._ended: dict[tuple[int, int, str], SearchState] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The per-study caches are keyed by the storage object's id: meaningless elsewhere
        # (the RecordCache pickles itself empty).
        state = self.__dict__.copy()
        state["_directions"], state["_checked"], state["_ended"] = {}, set(), {}
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
        self._ended.pop(_study_key(study), None)
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
        # The copy is parsed apart, never kept: the storage stores its own finish time.
        search = self._records.reader(study).state(
            trials, self.config_for(study), self.study_direction(study), apart=finished
        )
        self._ended[_study_key(study)] = search
        if search.done:
            _logger.info("the search is %s: stopping study %r", search.phase, study.study_name)
            study.stop()

    def take_state_after_trial(self, study: Study) -> SearchState | None:
        """The search state as the last trial of ``study`` that ended in this process left
        it (replayed by :meth:`after_trial`, with the trial's result), or ``None`` when none
        was replayed since the last call; the state is handed out once.

        A worker asks it after each trial instead of reading and replaying the whole history
        again: the replay was one of the per-trial reads of every trial, each a read of all
        unfinished trials under the storage proxy's cache lock (:func:`~spnas.search.run_worker`).
        """
        return self._ended.pop(_study_key(whole_study(study)), None)

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
            # A stop signal deferred since Optuna made the trial is raised here, where the
            # trial is abandoned (spnas.search._signals.defer_stop_signals).
            deferred = accept_stop_signals()
            self.check_study(study)
            decision, written = self._decide(study, trial)
            # The decision and its params: one transaction on an RDB storage; elsewhere one
            # write each, in to_attrs' order: ``spnas:kind`` last, so other workers see no
            # decision (and wait) until the whole decision is there (see
            # spnas.search._waiting.write_decisions).
            attrs = {} if written else decision.to_attrs()
            record_architecture(storage_of(study), trial, self.config_for(study), decision, attrs)
            if deferred:  # decided: the objective takes over (it fails and retries the trial)
                defer_stop_signals()
        except BaseException:
            # Trials decide in number order: an undecided trial left RUNNING (a storage
            # error, Ctrl-C while waiting) would hold every later decision until it went stale.
            self._line.abandon(study, trial)
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
        because failing them failed too (the storage was down); the list is emptied
        (:meth:`~spnas.search._waiting.WaitingLine.take_unabandoned`)."""
        return self._line.take_unabandoned()

    def decide(self, study: Study, trial: FrozenTrial) -> Decision:
        """Wait until ``trial`` may decide, then decide (see the class docstring).

        The decision is returned, not written; a decision that a lower-numbered trial
        already wrote for ``trial`` (deciding ahead) is returned as it is.
        """
        return self._decide(study, trial)[0]

    def _decide(self, study: Study, trial: FrozenTrial) -> tuple[Decision, bool]:
        """:meth:`decide`, and whether the decision is already written on ``trial``: look at
        the study (:meth:`_look`) until ``trial`` may decide, waiting in between as the look
        says (in line, on a few running trials, or a growing step), or give up ``idle``."""
        config = self.config_for(study)
        direction = self.study_direction(study)
        started = time.monotonic()
        last_log: float | None = None
        max_step = MAX_WAIT_STEP_S
        interval = self._line.beat_interval(study)
        if interval is not None:
            # A waiting trial beats its own heart (keep_alive): it must look at least once
            # per heartbeat interval, or other workers fail it as stale.
            max_step = min(max_step, interval)
        step = min(config.search.wait_seconds, max_step)
        max_wait = self._max_wait if self._max_wait is not None else math.inf
        if not in_optimize_loop(study):
            max_wait = min(max_wait, self._ask_wait)
        deadline = started + max_wait
        while True:
            look = self._look(study, trial, config, direction, heartbeat=interval is not None)
            if look.decision is not None:
                return look.decision, look.written
            now = time.monotonic()
            if now - started >= max_wait:
                # Expected in ask-and-tell (ask again later); worth a warning in a worker.
                _logger.log(
                    logging.WARNING if in_optimize_loop(study) else logging.INFO,
                    "trial %d: idle after %.1f s %s",
                    trial.number,
                    now - started,
                    look.reason,
                )
                return Decision(TrialKind.IDLE), False
            if last_log is None or now - last_log >= LOG_EVERY_S:
                _logger.info("trial %d: %s", trial.number, look.reason)
                last_log = now
            self._line.keep_alive(study, trial, look.read)
            if look.blocking:
                mine = self._line.wait_in_line(study, trial, look.blocking, deadline, max_step)
                if mine is not None:
                    return mine, True
            elif look.watched:
                watch_step = min(max_step, MAX_WATCH_STEP_S)
                step = self._line.sleep_until_changed(
                    study, trial, look.watched, step, watch_step, deadline
                )
            else:
                pause_polling(step, deadline)
                step = min(step * 1.5, max_step)

    def _look(
        self,
        study: Study,
        trial: FrozenTrial,
        config: SearchConfig,
        direction: str,
        *,
        heartbeat: bool,
    ) -> _Look:
        """One read of the whole history: ``trial``'s decision if a trial below wrote it
        ahead, or if ``trial`` may decide now (then the line behind it is decided too); else
        why it waits, and the few trials to read meanwhile."""
        trials = study.get_trials(deepcopy=False)
        mine = Decision.of(trials[history_index(trials, trial.number)])
        if mine is not None:  # a lower-numbered trial decided ahead for this one
            return _Look(mine, written=True)
        reader = self._records.reader(study)
        # Only the trials after the history's kept head may still run or wait.
        unsettled = reader.unsettled(trials)
        # The state first: most trials finished, and it rules them out at once.
        blocking = [
            t
            for t in unsettled
            if t.state == TrialState.RUNNING and t.number < trial.number and Decision.of(t) is None
        ]
        if blocking:
            numbers = [t.number for t in blocking[:5]]
            return _Look(
                reason=f"waiting for trial(s) {numbers} to decide first",
                blocking=blocking,
                read=trials,
            )
        state = reader.state(trials, config, direction)
        fresh = self._line.fresh_failures(state) if heartbeat else []
        if fresh:
            return _Look(
                reason=f"waiting for the retry of failed trial(s) {fresh[:5]}, if any", read=trials
            )
        if state.done or state.next_kind is not None:
            return _Look(self._decide_now(study, trials, trial, state, direction, reader))
        queued = [
            t.number
            for t in reader.unsettled(trials)
            if t.state == TrialState.WAITING and Decision.of(t) is not None
        ]
        if queued:
            # A retry of a dead worker's trial waits in the queue, and what we wait for may be
            # that very retry: step aside, so that this worker's next trial takes it from the
            # queue, instead of every worker waiting for it forever.
            _logger.info("trial %d: stepping aside for queued trial(s) %s", trial.number, queued)
            return _Look(Decision(TrialKind.IDLE, round=state.round))
        # What this wait is for, when a few trials say it: they alone are read until one of
        # them changes, instead of the whole history at every look.
        running = [t for t in reader.unsettled(trials) if is_running_decided(t)]
        return _Look(
            reason=state.waiting_for,
            watched=running if len(running) <= MAX_WATCHED else [],
            read=trials,
        )

    def _decide_now(
        self,
        study: Study,
        trials: list[FrozenTrial],
        trial: FrozenTrial,
        state: SearchState,
        direction: str,
        reader: RecordReader,
    ) -> Decision:
        """Decide ``trial`` on ``state`` (``idle`` once the search is done, which stops the
        optimize loop), and decide ahead for the line behind it (replaying ``trials`` through
        this look's ``reader``)."""
        if state.done:
            if in_optimize_loop(study):
                study.stop()
            decision = Decision(TrialKind.IDLE, round=state.round)
        else:
            decision = self._decision(state, trial.number)
        config = state.config
        self._line.decide_ahead(
            study,
            trials,
            trial,
            decision,
            self._decision,
            lambda history: reader.state(history, config, direction),
        )
        return decision

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
