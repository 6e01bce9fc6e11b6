"""The SP-NAS search state, derived from a study's trials (paper Algorithm 1, docs/design.md §4).

The state is kept nowhere: :meth:`SearchState.from_trials` replays the history in storage,
so any worker on any node reaches the same state, and a restarted search goes on where it was.
Only the parsing of finished trials is kept between decisions
(:class:`~spnas.search._records.RecordCache`): a finished trial never changes; and what a replay
derives from the history's head of finished trials alone (:mod:`spnas.search._memo`).

Every decided trial carries its decision in two system attributes: ``spnas:decision`` (``arch``,
``parallel``, ``parent``, ``ops``, ``round``; ``role`` and ``repeat`` for verification) and
``spnas:kind``, written last. The kinds (:class:`TrialKind`, stored as their values):

============== ==================================================================
``seed``       first trial: the seed network from pretrained weights (barrier)
``serial``     a morphism of the round's best network (round ``r``)
``reignite``   round ``r`` stuck: pretrain the round's best, retrain; its result is
               round ``r+1``'s baseline (barrier)
``parallel_seed`` the best serial network as an SPNet with no subnets (barrier)
``parallel``   a sampled parallel code, from the best parallel model
``final``      optional: the best SPNet on the full schedule (barrier)
``exhausted``  no new candidate existed: ends the round or phase (never trained)
``idle``       asked for after the search ended (never trained)
============== ==================================================================

Rounds: serial round ``r`` ends after ``n_stuck`` finished serial trials in a row (in the order
they finished) without beating the round's best — or, when ``serial.max_trials`` is set, after
that many trials (a compute budget per round) — once none of its trials is still running.
The parallel phase ends likewise (``parallel.n_stuck``, ``parallel.max_trials``).
Rounds ``1..n_rounds`` end with a reignition; round ``n_rounds + 1`` ends the serial phase.
Finished means COMPLETE, PRUNED, or FAILED with no retry pending (a failure is no
improvement). A barrier runs exactly once: while it runs, every other decision waits.

Comparison at equal training (``search.comparison``, docs/design.md "Equal training"):

- ``equal_training`` (default): every candidate of a round — serial children and parallel
  codes alike — starts from the weights of the round's *baseline* (the seed, the reignition, or
  the parallel seed) and trains one schedule, its morphisms composed from the baseline's
  architecture. A ``control`` trial continues the baseline itself for the same schedule; it is
  the round's reference: a candidate improves only by beating the control or a better candidate,
  all with exactly the same training. The control is no barrier: candidates train beside it,
  and are judged once it finished. With ``search.noise_repeats`` = k > 1 the control trains k
  times, with the training seeds ``schedule.seed + repeat`` (decision field ``repeat``; the
  first has none): their standard deviation is the round's σ_trial (:func:`round_noise`), the
  noise of one search trial, their mean the round's reference. Candidates are judged once
  every repeat finished; a repeat that fails or diverges fails like the control.

Acceptance (``search.acceptance``, docs/design.md §4.1): ``noise_aware`` (default): a
candidate replaces the round's best only if it beats it by more than ``search.accept_z`` ×
σ_trial, and again as the mean with its re-evaluation (the same decision with ``repeat`` 1:
another training seed), decided before any new candidate; ``greedy``: any better value.
- ``greedy``: the paper's rule: a child starts from its parent's trained weights and must beat
  the parent's value, which mixes the architecture with the training the lineage accumulated.

After the parallel phase, when ``verify.enabled``, ``verify`` trials retrain the seed, the best
network of every serial round and the best SPNet from scratch, ``verify.repeats`` seeds each
(paper Fig. 4a; :func:`spnas.search.retrain`); they run side by side, a failed one is retried
up to ``search.max_barrier_attempts`` times, and the search is done when all have finished.

A trial whose training diverged (a non-finite loss: the objective records it as PRUNED with
the user attributes ``diverged``, ``diverged_iteration``, ``diverged_loss`` and ``seed``) is a
result, not a fault: the same network, seed and schedule diverge again, so it is never
retried. A diverged verification repeat is a finished, failed repeat (the verdict counts it);
a diverged candidate is a failed candidate; a diverged barrier or control ends the search as
``failed``, its reason naming the trial, iteration and loss (docs/design.md §4.2).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from spnas.arch import ParallelCode, SerialCode
from spnas.exceptions import ConfigError
from spnas.search._memo import FixedHead, Judgement, ReplayMemo, merge_finished
from spnas.search._stats import noise_sigma

ATTR_PREFIX = "spnas:"


class TrialKind(str, enum.Enum):
    """What a trial trains (the table above); stored as its value in ``spnas:kind``.

    A ``str``: a member equals, hashes and formats as its value (``TrialKind.SEED == "seed"``),
    so studies written with plain strings load unchanged and the value is what is stored.
    """

    SEED = "seed"
    SERIAL = "serial"
    REIGNITE = "reignite"
    PARALLEL_SEED = "parallel_seed"
    PARALLEL = "parallel"
    FINAL = "final"
    CONTROL = "control"
    VERIFY = "verify"
    EXHAUSTED = "exhausted"
    IDLE = "idle"

    def __str__(self) -> str:
        # The value, not ``TrialKind.SEED``, in messages (and in format() on Python ≥ 3.12).
        return self.value


KINDS: tuple[TrialKind, ...] = tuple(TrialKind)
BARRIER_KINDS: frozenset[TrialKind] = frozenset(
    {TrialKind.SEED, TrialKind.REIGNITE, TrialKind.PARALLEL_SEED, TrialKind.FINAL}
)
#: Kinds whose value the search needs (barriers, a round's control, verification): a pruner
#: never stops them.
UNPRUNABLE_KINDS: frozenset[TrialKind] = BARRIER_KINDS | {TrialKind.CONTROL, TrialKind.VERIFY}
#: Kinds that train nothing: no candidate was left, or the search had ended.
UNTRAINED_KINDS: frozenset[TrialKind] = frozenset({TrialKind.EXHAUSTED, TrialKind.IDLE})


def _kind(value: str) -> TrialKind:
    try:
        return TrialKind(value)
    except ValueError:
        raise ConfigError(
            f"trial kind {value!r}: expected one of {', '.join(k.value for k in TrialKind)}"
        ) from None


PHASES: tuple[str, ...] = ("seed", "serial", "parallel", "verify", "final", "done", "failed")


#: The trial system attributes of a decision: its mark (written last) and its fields.
KIND_ATTR = f"{ATTR_PREFIX}kind"
DECISION_ATTR = f"{ATTR_PREFIX}decision"
_FIELDS = ("arch", "parallel", "parent", "ops", "round", "role", "repeat")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one trial trains: written on the trial by the sampler, read by the objective."""

    kind: TrialKind
    arch: SerialCode | None = None
    parallel: ParallelCode | None = None
    parent: int | None = None
    ops: tuple[str, ...] = ()
    round: int = 0
    #: ``verify`` trials: which network (``seed``, ``round 1`` …, ``spnet``) and which seed.
    #: ``control`` trials: which noise repeat (``None``: the first, ``k``: seed
    #: ``schedule.seed + k``).
    role: str | None = None
    repeat: int | None = None

    def __post_init__(self) -> None:
        # A plain string (a stored value, or ``Decision("serial")``) becomes its member.
        if not isinstance(self.kind, TrialKind):
            object.__setattr__(self, "kind", _kind(self.kind))

    def to_attrs(self) -> dict[str, Any]:
        """The trial system attributes that hold this decision: ``spnas:decision`` (the
        fields) and ``spnas:kind`` (the mark that it is there; written last).

        Two attributes, not one per field: each is one storage round trip, and after a
        barrier one trial writes the decisions of hundreds (see ``SPNASSampler``).
        """
        body: dict[str, Any] = {
            "arch": None if self.arch is None else str(self.arch),
            "parallel": None if self.parallel is None else str(self.parallel),
            "parent": self.parent,
            "ops": list(self.ops),
            "round": self.round,
        }
        if self.role is not None or self.repeat is not None:
            body.update(role=self.role, repeat=self.repeat)
        return {DECISION_ATTR: body, KIND_ATTR: self.kind.value}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Decision | None:
        kind = attrs.get(KIND_ATTR)
        if kind is None:
            return None
        body = attrs.get(DECISION_ATTR)
        if body is None:  # studies written before 2026-12: one attribute per field
            body = {name: attrs.get(f"{ATTR_PREFIX}{name}") for name in _FIELDS}
        arch, parallel = body.get("arch"), body.get("parallel")
        return cls(
            kind=kind,
            arch=None if arch is None else SerialCode.parse(arch),
            parallel=None if parallel is None else ParallelCode.parse(parallel),
            parent=body.get("parent"),
            ops=tuple(body.get("ops") or ()),
            round=int(body.get("round") or 0),
            role=body.get("role"),
            repeat=body.get("repeat"),
        )

    @classmethod
    def of(cls, trial: FrozenTrial) -> Decision | None:
        """The decision written on ``trial`` (``None`` when it has not decided yet)."""
        return cls.from_attrs(trial.system_attrs)

    # Cached: the decisions of finished trials are kept between replays
    # (spnas.search._records), and every proposal lists the candidates of all of them.
    @functools.cached_property
    def candidate(self) -> tuple[str, str | None]:
        """Identity of the network trained: serial code and parallel code."""
        return (str(self.arch), None if self.parallel is None else str(self.parallel))


#: User attributes of a trial whose training diverged (set by the objective).
DIVERGED_ATTR = "diverged"
DIVERGED_ITERATION_ATTR = "diverged_iteration"
DIVERGED_LOSS_ATTR = "diverged_loss"
SEED_ATTR = "seed"


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where a trial's training diverged: the iteration, the loss there, and the seed."""

    iteration: int | None
    loss: float | None
    seed: int | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> Divergence | None:
        """The divergence recorded on a finished, not completed ``trial``; else ``None``."""
        attrs = trial.user_attrs
        if attrs.get(DIVERGED_ATTR) is not True or trial.state in (
            TrialState.COMPLETE,
            TrialState.RUNNING,
            TrialState.WAITING,
        ):
            return None
        return cls(
            attrs.get(DIVERGED_ITERATION_ATTR),
            attrs.get(DIVERGED_LOSS_ATTR),
            attrs.get(SEED_ATTR),
        )

    def describe(self) -> str:
        """``at iteration 33 (loss nan, seed 2)``: what a reason or verdict says of it."""
        where = "" if self.iteration is None else f" at iteration {self.iteration}"
        details = []
        if self.loss is not None:
            details.append(f"loss {self.loss:.4g}")
        if self.seed is not None:
            details.append(f"seed {self.seed}")
        return where + (f" ({', '.join(details)})" if details else "")


@dataclasses.dataclass(frozen=True)
class Record:
    """A decided trial as the state machine sees it."""

    number: int
    decision: Decision
    state: TrialState
    value: float | None
    finished_at: datetime | None
    #: Set when its training diverged: a result, never retried.
    diverged: Divergence | None = None

    # Cached: a replay asks every record several times, and the records of finished trials
    # are kept between replays (spnas.search._records).
    @functools.cached_property
    def running(self) -> bool:
        return self.state in (TrialState.RUNNING, TrialState.WAITING)

    @functools.cached_property
    def finished(self) -> bool:
        return not self.running

    @functools.cached_property
    def finish_order(self) -> tuple[datetime, int]:
        """Its place in the order the trials finished (unfinished ones last), the order a
        round judges its candidates in."""
        return self.finished_at or datetime.max, self.number


@dataclasses.dataclass(frozen=True)
class Best:
    """The best network of a round or phase: the trial, its architecture and its value.

    ``ops`` are the morphisms from the architecture of the trial whose weights it started from
    (its decision's ``ops``): with equal training, from the round's baseline.
    """

    number: int
    arch: SerialCode
    parallel: ParallelCode | None
    value: float
    ops: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SearchState:
    """Where the search stands, and what the next trial must be.

    Attributes:
        phase: one of :data:`PHASES`.
        round: the current serial round (1-based; 0 before the seed completes).
        next_kind: the kind the next trial must take, or ``None`` when it must wait.
        waiting_for: why the next trial must wait (a sentence), when it must.
        parent: the network the next candidate is proposed from (round best, or best
            parallel), or the barrier's network.
        init_from: the trial whose weights the next candidate starts from: the round's
            baseline with equal training, ``parent`` with the greedy rule.
        stuck: finished trials in a row without improvement in the current round/phase.
        best_serial: best network of the serial phase so far (any round).
        best_parallel: best SPNet so far.
        round_best: best of the current round (the parent of serial proposals).
        round_bests: the best network of every serial round reached so far.
        round_baselines: per round, the trial whose weights the round started from.
        pending: the whole decision of the next trial, when the state fixes it
            (``verify``: which network, which seed).
        ranked_by: the direction values were ranked by (``maximize``/``minimize``), as given
            to :meth:`from_trials`; ``None``: the config metric's (:attr:`direction`).
        records: every decided, not superseded trial, in trial-number order.
        config: the :class:`~spnas.search.SearchConfig` the state was derived under.
        reason: why the search failed, for phase ``failed``.
    """

    phase: str
    round: int
    next_kind: TrialKind | None
    waiting_for: str | None
    parent: Best | None
    stuck: int
    best_serial: Best | None
    best_parallel: Best | None
    round_best: Best | None
    round_baselines: dict[int, int]
    records: tuple[Record, ...]
    config: Any
    reason: str | None = None
    init_from: Best | None = None
    round_bests: dict[int, Best] = dataclasses.field(default_factory=dict)
    pending: Decision | None = None
    ranked_by: str | None = None
    #: The replay's view of the memo it was derived with (spnas.search._memo): what it kept of
    #: the history's head serves taken() and taken_serial() too.
    _fixed: FixedHead | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def direction(self) -> str:
        """How values were ranked: the study's direction given to :meth:`from_trials`, else
        the config metric's."""
        return self.ranked_by or self.config.direction

    @property
    def done(self) -> bool:
        return self.phase in ("done", "failed")

    def taken(self) -> set[tuple[str, str | None]]:
        """Candidates already decided (to avoid proposing them again)."""
        return self._collect("taken", _candidate)

    def taken_serial(self) -> frozenset[SerialCode]:
        """Serial networks already decided (without subnets), to avoid proposing them again."""
        return frozenset(self._collect("taken_serial", _serial_arch))

    def failures(self) -> set[int]:
        """The numbers of the failed trials that count (no retry supersedes them)."""
        return self._collect("failures", _failure)

    def _collect(self, key: str, values: Callable[[Record], Any | None]) -> set[Any]:
        fixed = self._fixed if self._fixed is not None else FixedHead(None, 0)
        return fixed.collect(self.records, key, values)

    def of_kind(self, *kinds: TrialKind) -> list[Record]:
        return [r for r in self.records if r.decision.kind in kinds]

    @classmethod
    def from_trials(
        cls,
        trials: Sequence[FrozenTrial],
        config: Any,
        direction: str | StudyDirection | None = None,
    ) -> SearchState:
        """Replay ``trials`` under ``config`` (a :class:`SearchConfig`).

        Values are ranked (better, best, stuck) by ``direction``: the direction of the study
        the trials belong to (``study.direction``), which :class:`SPNASSampler` passes. The
        config metric's direction (``config.direction``, the default) only sets up the studies
        spnas creates, so it is the study's direction too unless the study was made otherwise.
        """
        return cls.from_records(trial_records(trials), config, direction)

    @classmethod
    def from_records(
        cls,
        records: Sequence[Record],
        config: Any,
        direction: str | StudyDirection | None = None,
        memo: ReplayMemo | None = None,
    ) -> SearchState:
        """Replay the history ``records`` (:func:`trial_records` of the trials) under
        ``config``, as :meth:`from_trials` does: the same state, without parsing the trials
        again (:class:`~spnas.search._records.RecordCache` keeps their records). ``memo``
        keeps what the replay derives from the history's fixed head for the next replay
        (:mod:`spnas.search._memo`; the same state, walking only the records after the head).
        """
        if memo is None:
            return _Replay(records, config, direction).run()
        name = direction_name(direction) if direction is not None else config.direction
        with memo.use(records, config, name) as fixed:
            return _Replay(records, config, name, fixed).run()


def barrier_backoff(attempts: Sequence[Record], base_seconds: float) -> float:
    """Seconds left before a failed barrier may be tried again (0: now).

    The ``n``-th failure waits ``base_seconds * 2 ** (n - 1)`` from its end, so a transient
    fault (a full disk being cleaned, a file system remounting, a bucket throttling) has
    time to pass before the attempts run out, instead of all failing within seconds.
    """
    ends = [r.finished_at for r in attempts if r.finished_at is not None]
    if not ends or base_seconds <= 0:
        return 0.0
    delay = base_seconds * 2 ** (len(attempts) - 1)
    elapsed = (datetime.now() - max(ends)).total_seconds()
    return max(0.0, delay - elapsed)


def direction_name(direction: str | StudyDirection) -> str:
    """``"maximize"`` or ``"minimize"``, from either spelling."""
    if isinstance(direction, StudyDirection):
        return direction.name.lower()
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction {direction!r}: expected 'maximize' or 'minimize'")
    return direction


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _beats(value: float, best: float, margin: float, direction: str) -> bool:
    """``value`` is better than ``best`` by more than ``margin`` (0: simply better)."""
    return (value - best > margin) if direction == "maximize" else (best - value > margin)


@dataclasses.dataclass
class _Judged:
    """What judging a round's finished candidates found (:meth:`_Replay.rounds_loop`)."""

    best: Best
    ended: bool = False
    exhausted: bool = False
    running: list[Record] = dataclasses.field(default_factory=list)
    #: A would-be winner's re-evaluation, to decide now.
    pending: Decision | None = None
    #: A would-be winner's running re-evaluation: later candidates wait for it.
    waiting: Record | None = None


def trial_record(trial: FrozenTrial) -> Record | None:
    """``trial`` as the state machine sees it; ``None`` when it has not decided, or is
    ``idle`` (which changes nothing). A function of the trial alone: once the trial finished,
    Optuna lets nothing of it change, so a caller may keep the record
    (:class:`~spnas.search._records.RecordCache`)."""
    decision = Decision.of(trial)
    if decision is None or decision.kind == TrialKind.IDLE:
        return None
    value = trial.value if trial.state == TrialState.COMPLETE else None
    if value is not None and not math.isfinite(value):
        value = None
    return Record(
        trial.number,
        decision,
        trial.state,
        value,
        trial.datetime_complete,
        Divergence.of(trial),
    )


def trial_records(
    trials: Iterable[FrozenTrial],
    record: Callable[[FrozenTrial], Record | None] = trial_record,
) -> tuple[Record, ...]:
    """The records of ``trials`` that count, in trial-number order: decided, not ``idle``, and
    not superseded. ``record`` turns one trial into its record (:func:`trial_record`, or a
    cache of it)."""
    trials = list(trials)
    retried = retried_numbers(trials)
    records = []
    for trial in sorted(trials, key=_NUMBER):
        if trial.state == TrialState.FAIL and trial.number in retried:
            continue
        found = record(trial)
        if found is not None:
            records.append(found)
    return tuple(records)


_NUMBER = operator.attrgetter("number")
_FINISH = operator.attrgetter("finish_order")


def _candidate(record: Record) -> tuple[str, str | None] | None:
    return record.decision.candidate if record.decision.arch is not None else None


def _serial_arch(record: Record) -> SerialCode | None:
    return record.decision.arch if record.decision.parallel is None else None


def _failure(record: Record) -> int | None:
    return record.number if record.state == TrialState.FAIL else None


def _is_repeat(record: Record) -> bool:
    return bool(record.decision.repeat)


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers that the ``retry_history`` of ``trials`` names: failed trials that a retry
    (Optuna's retry callbacks, ``spnas resume``) supersedes, its copy of their
    decision counting instead."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def verification_plan(state: SearchState) -> list[tuple[str, Best]]:
    """The networks verification retrains, as ``(role, network)``: the seed, the best of every
    serial round, and the best SPNet; a network met twice (a round that kept its baseline's
    architecture, an SPNet without parallel subnets, which is its serial network) is retrained
    once, under its first role."""
    plan: list[tuple[str, Best]] = []
    seen: set[tuple[str, str | None]] = set()
    # The first completed seed: at the history's start, so found without walking it all.
    record = next(
        (r for r in state.records if r.decision.kind == TrialKind.SEED and r.value is not None),
        None,
    )
    candidates: list[tuple[str, Best | None]] = []
    if record is not None:
        assert record.decision.arch is not None and record.value is not None
        candidates.append(("seed", Best(record.number, record.decision.arch, None, record.value)))
    candidates += [(f"round {r}", best) for r, best in sorted(state.round_bests.items())]
    candidates.append(("spnet", state.best_parallel))
    for role, best in candidates:
        if best is None:
            continue
        # No parallel subnet at all: the same network as the serial code alone.
        parallel = None if best.parallel is None or best.parallel.total == 0 else best.parallel
        key = (str(best.arch), None if parallel is None else str(parallel))
        if key not in seen:
            seen.add(key)
            plan.append((role, best))
    return plan


class _Replay:
    """One pass over the history, phase by phase."""

    def __init__(
        self,
        records: Sequence[Record],
        config: Any,
        direction: str | StudyDirection | None = None,
        fixed: FixedHead | None = None,
    ) -> None:
        self.config = config
        self.direction = direction_name(direction) if direction is not None else config.direction
        self.equal_training = config.search.comparison == "equal_training"
        self.records = tuple(records)
        # What the memo kept of the history's head (spnas.search._memo), if any: each step
        # reads the records after it only.
        self.fixed = fixed if fixed is not None else FixedHead(None, 0)
        # Without it, one pass over the history: each step of the replay reads the records of
        # one kind (a barrier, a round, the controls) instead of scanning them all again.
        self.by_kind: dict[TrialKind, list[Record]] = {}
        if not self.fixed.count:
            for record in self.records:
                self.by_kind.setdefault(record.decision.kind, []).append(record)
        self.round = 0
        self.stuck = 0
        self.best_serial: Best | None = None
        self.best_parallel: Best | None = None
        self.round_best: Best | None = None
        self.round_bests: dict[int, Best] = {}
        self.baselines: dict[int, int] = {}

    def state(
        self,
        phase: str,
        next_kind: TrialKind | None,
        waiting_for: str | None = None,
        parent: Best | None = None,
        reason: str | None = None,
        init_from: Best | None = None,
        pending: Decision | None = None,
    ) -> SearchState:
        return SearchState(
            phase=phase,
            round=self.round,
            next_kind=next_kind,
            waiting_for=waiting_for,
            parent=parent,
            stuck=self.stuck,
            best_serial=self.best_serial,
            best_parallel=self.best_parallel,
            round_best=self.round_best,
            round_baselines=dict(self.baselines),
            records=self.records,
            config=self.config,
            reason=reason,
            init_from=init_from if init_from is not None else parent,
            round_bests=dict(self.round_bests),
            pending=pending,
            ranked_by=self.direction,
            _fixed=self.fixed if self.fixed.count else None,
        )

    def of_kind(
        self,
        *kinds: TrialKind,
        key: Hashable = None,
        test: Callable[[Record], bool] | None = None,
    ) -> list[Record]:
        """The records of ``kinds`` (that pass ``test``, which ``key`` names for the memo: one
        key, one test), in trial-number order."""
        if self.fixed.count:
            return self.fixed.select(
                self.records,
                (kinds, key),
                lambda r: r.decision.kind in kinds and (test is None or test(r)),
            )
        if len(kinds) == 1:
            found = self.by_kind.get(kinds[0], [])
        else:
            found = sorted((r for k in kinds for r in self.by_kind.get(k, ())), key=_NUMBER)
        return found if test is None else [r for r in found if test(r)]

    def best_of(self, record: Record, value: float | None = None) -> Best:
        """``record``'s network as a best, with ``value`` instead of its own if given."""
        assert record.value is not None and record.decision.arch is not None
        d = record.decision
        return Best(
            record.number, d.arch, d.parallel, record.value if value is None else value, d.ops
        )

    def attempts_state(self, attempts: list[Record]) -> tuple[Record | None, str]:
        """The completed trial among ``attempts``, else the diverged one (``diverged``: never
        retried, it would diverge again), else ``running``, ``decide`` or ``failed``."""
        for record in attempts:
            if record.state == TrialState.COMPLETE and record.value is not None:
                return record, "complete"
        for record in attempts:
            if record.diverged is not None:
                return record, "diverged"
        if any(r.running for r in attempts):
            return None, "running"
        if len(attempts) >= self.config.search.max_barrier_attempts:
            return None, "failed"
        return None, "decide"

    def failed(self, kind: str, attempts: list[Record]) -> SearchState:
        numbers = ", ".join(str(r.number) for r in attempts)
        return self.state(
            "failed",
            None,
            reason=f"{kind} failed {len(attempts)} times (trials {numbers}); see their logs",
        )

    def diverged(self, kind: str, record: Record) -> SearchState:
        """The search failed: a barrier or control diverged, and every later step needs it."""
        assert record.diverged is not None
        return self.state(
            "failed",
            None,
            reason=(
                f"{kind} trial {record.number} ({record.decision.arch}) diverged"
                f"{record.diverged.describe()}: lower schedule.base_lr or raise "
                "schedule.warmup_iters, then start a new study"
            ),
        )

    def barrier(
        self, kind: TrialKind, round_: int, phase: str, parent: Best | None
    ) -> tuple[Record | None, SearchState | None]:
        """The completed barrier trial, or the state to return while it is not complete."""
        attempts = [r for r in self.of_kind(kind) if r.decision.round == round_]
        record, status = self.attempts_state(attempts)
        if status == "complete":
            return record, None
        if status == "running":
            running = [r for r in attempts if r.running]
            what = f"{kind} trial {running[0].number}" + (f" (round {round_})" if round_ else "")
            return None, self.state(phase, None, f"waiting for {what} to finish", parent)
        if status == "failed":
            return None, self.failed(kind, attempts)
        if status == "diverged":
            assert record is not None
            return None, self.diverged(kind, record)
        wait = barrier_backoff(attempts, self.config.search.barrier_backoff_seconds)
        if wait > 0:
            what = f"{kind}" + (f" (round {round_})" if round_ else "")
            limit = self.config.search.max_barrier_attempts
            return None, self.state(
                phase,
                None,
                f"waiting {wait:.0f} s before attempt {len(attempts) + 1} of {limit} of the "
                f"{what} barrier (trial {attempts[-1].number} failed)",
                parent,
            )
        return None, self.state(phase, kind, parent=parent)

    def rounds_loop(
        self,
        records: list[Record],
        best: Best,
        stuck_limit: int,
        max_trials: int | None,
        sigma: float | None,
        key: Hashable = None,
    ) -> _Judged:
        """Judge the finished candidates in the order they finished (docs/design.md §4.1).

        A round ends when stuck, exhausted, or — with ``max_trials`` — when its budget of
        trials is spent (running ones and re-evaluations included, so no trial beyond the
        budget is proposed). With ``search.acceptance: noise_aware`` a candidate must beat
        the best by more than ``accept_z`` × ``sigma`` (σ_trial; 0 when unmeasured); such a
        would-be winner is re-evaluated (the same decision, ``repeat`` 1: another training
        seed) and replaces the best only if the mean of its two values beats it by as much.
        Candidates that finished after it are judged once its re-evaluation finished.

        With the memo (``key`` names the round in it), the head's candidates are kept in
        finish order, and so is the judgement of the longest prefix whose verdicts are fixed:
        only the candidates after it are judged again.
        """
        search = self.config.search
        noise_aware = search.acceptance == "noise_aware"
        margin = search.accept_z * sigma if noise_aware and sigma else 0.0
        memo = self.fixed.round(key) if key is not None else None
        fixed = self.fixed.fixed_in(records) if memo is not None else 0
        rest = records[fixed:]
        rest_finished = sorted(
            (r for r in rest if r.finished and not r.decision.repeat), key=_FINISH
        )
        if memo is None:
            repeats = [r for r in records if r.decision.repeat]
            finished = rest_finished
        else:
            memo.update(records[:fixed], _is_repeat)
            repeats = memo.repeats + [r for r in rest if r.decision.repeat]
            finished = merge_finished(memo.finished, rest_finished)
        reevaluations: dict[tuple[str, str | None], list[Record]] = {}
        for record in repeats:
            reevaluations.setdefault(record.decision.candidate, []).append(record)
        last_fixed = self.fixed.last
        start = (best, margin)
        judged = _Judged(best)
        self.stuck = 0
        begin = 0
        kept = memo.judgement if memo is not None else None
        if kept is not None and kept.start == start and finished[: len(kept.prefix)] == kept.prefix:
            judged.best, self.stuck, judged.exhausted = kept.outcome
            begin = len(kept.prefix)
        settled = memo is not None
        for index in range(begin, len(finished)):
            record = finished[index]
            verdict = self.judge(record, judged, margin, noise_aware, reevaluations, last_fixed)
            if verdict is None:
                break
            if settled and verdict and record.number <= last_fixed:
                outcome = (judged.best, self.stuck, judged.exhausted)
                kept = Judgement(start, finished[: index + 1], outcome)
            else:
                settled = False
        if memo is not None:
            memo.judgement = kept
        judged.running = [r for r in rest if r.running]
        spent = max_trials is not None and len(records) >= max_trials
        judged.ended = judged.exhausted or spent or self.stuck >= stuck_limit
        return judged

    def judge(
        self,
        record: Record,
        judged: _Judged,
        margin: float,
        noise_aware: bool,
        reevaluations: dict[tuple[str, str | None], list[Record]],
        last_fixed: int,
    ) -> bool | None:
        """Judge one finished candidate into ``judged``: ``None`` when judging must stop
        here (its re-evaluation is to decide or running), else whether the verdict is fixed:
        it read no re-evaluation after the head's last trial, ``last_fixed``."""
        if record.decision.kind == TrialKind.EXHAUSTED:
            judged.exhausted = True
            return True
        value = record.value
        if value is None or not _beats(value, judged.best.value, margin, self.direction):
            self.stuck += 1
            return True
        fixed = True
        if noise_aware:
            attempts = reevaluations.get(record.decision.candidate, [])
            again, status = self.attempts_state(attempts)
            if status == "decide":
                judged.pending = dataclasses.replace(record.decision, repeat=1)
                return None
            if status == "running":
                judged.waiting = next(r for r in attempts if r.running)
                return None
            # Complete, diverged or out of attempts: final if every attempt is in the head
            # (one after it may still be retried, and leave the records).
            fixed = all(r.number <= last_fixed for r in attempts)
            mean = None if status != "complete" or again is None else (value + again.value) / 2
            if mean is None or not _beats(mean, judged.best.value, margin, self.direction):
                self.stuck += 1  # failed, diverged, or not better on average: rejected
                return fixed
            value = mean
        judged.best = self.best_of(record, value)
        self.stuck = 0
        return fixed

    def round_result(
        self,
        phase: str,
        baseline: Record,
        records: list[Record],
        stuck_limit: int,
        max_trials: int | None,
        key: Hashable = None,
    ) -> Best | SearchState:
        """The best network of a finished round (or the parallel phase), else the state.

        ``phase`` is ``serial`` or ``parallel``; ``records`` are the round's candidates
        (``key`` names them in the memo).
        """
        # The baseline's own morphisms led to it from its parent; the round starts from it.
        start = dataclasses.replace(self.best_of(baseline), ops=())
        reference = start
        sigma: float | None = None
        self.set_best(phase, start)
        if self.equal_training:
            parallel_phase = phase == "parallel"
            controls = [
                r
                for r in self.of_kind(TrialKind.CONTROL)
                if r.decision.parent == baseline.number
                and (r.decision.parallel is not None) == parallel_phase
            ]
            done: list[Record] = []
            for repeat in range(self.config.search.noise_repeats):
                attempts = [r for r in controls if (r.decision.repeat or 0) == repeat]
                what = "control" if repeat == 0 else f"control repeat {repeat}"
                control, status = self.attempts_state(attempts)
                if status == "failed":
                    return self.failed(what, attempts)
                if status == "diverged":
                    assert control is not None
                    return self.diverged(what, control)
                if status == "decide":
                    pending = Decision(
                        TrialKind.CONTROL,
                        arch=start.arch,
                        parallel=start.parallel,
                        parent=start.number,
                        round=self.round,
                        repeat=repeat or None,
                    )
                    return self.state(phase, TrialKind.CONTROL, parent=start, pending=pending)
                if control is not None:
                    done.append(control)
            if len(done) < self.config.search.noise_repeats:
                # A control still trains: candidates may train beside it, proposed from the
                # baseline's architecture, but none is judged before every control finished.
                self.stuck = 0
                spent = max_trials is not None and len(records) >= max_trials
                if spent or any(r.decision.kind == TrialKind.EXHAUSTED for r in records):
                    running = ", ".join(str(r.number) for r in controls if r.running)
                    return self.state(phase, None, f"waiting for control trial {running}", start)
                return self.state(phase, TrialKind(phase), parent=start)
            # The reference: the control's mean over its noise repeats.
            values = [r.value for r in done if r.value is not None]
            sigma = noise_sigma(values)
            reference = dataclasses.replace(self.best_of(done[0]), value=sum(values) / len(values))
        judged = self.rounds_loop(records, reference, stuck_limit, max_trials, sigma, key)
        best, running = judged.best, judged.running
        self.set_best(phase, best)
        init_from = start if self.equal_training else best
        if judged.pending is not None:
            # A would-be winner is re-evaluated before anything else (even past max_trials:
            # a candidate is judged whole).
            return self.state(
                phase, TrialKind(phase), parent=best, init_from=init_from, pending=judged.pending
            )
        if judged.waiting is not None and judged.ended:
            return self.state(
                phase,
                None,
                f"waiting for re-evaluation trial {judged.waiting.number}",
                parent=best,
                init_from=init_from,
            )
        if not judged.ended or judged.waiting is not None:
            return self.state(phase, TrialKind(phase), parent=best, init_from=init_from)
        if running:
            what = f"round {self.round}" if phase == "serial" else "the phase"
            return self.state(
                phase,
                None,
                f"waiting for {len(running)} running {phase} trial(s) before ending {what}",
                parent=best,
                init_from=init_from,
            )
        return best

    def set_best(self, phase: str, best: Best) -> None:
        if phase == "serial":
            self.round_best = best
            self.round_bests[self.round] = best
        else:
            self.best_parallel = best

    def run(self) -> SearchState:
        """Algorithm 1: the serial phase, the parallel phase, then verification and final."""
        serial_best = self.serial_phase()
        if isinstance(serial_best, SearchState):
            return serial_best
        best = self.parallel_phase(serial_best)
        if isinstance(best, SearchState):
            return best
        if self.config.verify.enabled:
            waiting = self.verification()
            if waiting is not None:
                return waiting
        if not self.config.final.enabled:
            return self.state("done", None, parent=best)
        final, waiting = self.barrier(TrialKind.FINAL, 0, "final", best)
        if final is None:
            assert waiting is not None
            return waiting
        return self.state("done", None, parent=best)

    def serial_phase(self) -> Best | SearchState:
        """The seed, then rounds ``1 .. n_rounds + 1``; rounds ``1..n_rounds`` end with a
        reignition. Returns the last round's best, or the state while the phase runs."""
        config = self.config
        seed, waiting = self.barrier(TrialKind.SEED, 0, "seed", None)
        if seed is None:
            assert waiting is not None
            return waiting
        self.best_serial = self.best_of(seed)
        baseline = seed
        last_round = config.serial.n_rounds + 1
        for round_ in range(1, last_round + 1):
            self.round = round_
            self.baselines[round_] = baseline.number
            key = ("serial", round_)
            records = self.of_kind(
                TrialKind.SERIAL,
                TrialKind.EXHAUSTED,
                key=key,
                test=lambda r, n=round_: r.decision.round == n and r.decision.parallel is None,
            )
            result = self.round_result(
                "serial", baseline, records, config.serial.n_stuck, config.serial.max_trials, key
            )
            assert self.round_best is not None
            if _better(self.round_best.value, self.best_serial.value, self.direction):
                self.best_serial = self.round_best
            if isinstance(result, SearchState):
                return dataclasses.replace(result, best_serial=self.best_serial)
            if round_ == last_round:
                return result
            reignite, waiting = self.barrier(TrialKind.REIGNITE, round_, "serial", result)
            if reignite is None:
                assert waiting is not None
                return waiting
            baseline = reignite
            if _better(reignite.value, self.best_serial.value, self.direction):
                self.best_serial = self.best_of(reignite)
        raise AssertionError("unreachable: the last round returns")

    def parallel_phase(self, serial_best: Best) -> Best | SearchState:
        """Subnets stacked on the last round's best network; the best SPNet, or the state."""
        config = self.config
        pseed, waiting = self.barrier(TrialKind.PARALLEL_SEED, 0, "parallel", serial_best)
        if pseed is None:
            assert waiting is not None
            return waiting
        # Parallel-phase records carry a parallel code (an "exhausted" one carries the zeros).
        key = ("parallel",)
        records = self.of_kind(
            TrialKind.PARALLEL,
            TrialKind.EXHAUSTED,
            key=key,
            test=lambda r: r.decision.parallel is not None,
        )
        return self.round_result(
            "parallel", pseed, records, config.parallel.n_stuck, config.parallel.max_trials, key
        )

    def verification(self) -> SearchState | None:
        """The state while verification trials remain to decide or finish; ``None`` after.

        A repeat is finished when it completed, diverged (never retried: the verdict counts
        it as a failed repeat) or failed ``search.max_barrier_attempts`` times (left out).
        """
        plan = verification_plan(self.state("verify", None))
        records = self.of_kind(TrialKind.VERIFY)
        running = 0
        for role, best in plan:
            for repeat in range(self.config.verify.repeats):
                attempts = [
                    r
                    for r in records
                    if r.decision.candidate == (str(best.arch), _text(best.parallel))
                    and r.decision.repeat == repeat
                ]
                _, status = self.attempts_state(attempts)
                if status == "running":
                    running += 1
                elif status == "decide":
                    pending = Decision(
                        TrialKind.VERIFY,
                        arch=best.arch,
                        parallel=best.parallel,
                        parent=best.number,
                        round=self.round,
                        role=role,
                        repeat=repeat,
                    )
                    return self.state("verify", TrialKind.VERIFY, parent=best, pending=pending)
        if running:
            return self.state(
                "verify", None, f"waiting for {running} running verification trial(s)"
            )
        return None


def _text(code: Any) -> str | None:
    return None if code is None else str(code)
