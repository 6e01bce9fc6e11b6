"""The SP-NAS search state, derived from a study's trials (paper Algorithm 1, DESIGN §4).

Nothing is kept between decisions: :meth:`SearchState.from_trials` replays the history in
storage, so any worker on any node reaches the same state, and a restarted search goes on
where it was.

Every decided trial carries its decision in system attributes (``spnas:kind``, ``spnas:arch``,
``spnas:parallel``, ``spnas:parent``, ``spnas:ops``, ``spnas:round``). The kinds:

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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from spnas.arch import ParallelCode, SerialCode

ATTR_PREFIX = "spnas:"
KINDS: tuple[str, ...] = (
    "seed",
    "serial",
    "reignite",
    "parallel_seed",
    "parallel",
    "final",
    "exhausted",
    "idle",
)
BARRIER_KINDS: frozenset[str] = frozenset({"seed", "reignite", "parallel_seed", "final"})
PHASES: tuple[str, ...] = ("seed", "serial", "parallel", "final", "done", "failed")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one trial trains: written on the trial by the sampler, read by the objective."""

    kind: str
    arch: SerialCode | None = None
    parallel: ParallelCode | None = None
    parent: int | None = None
    ops: tuple[str, ...] = ()
    round: int = 0

    def to_attrs(self) -> dict[str, Any]:
        return {
            f"{ATTR_PREFIX}kind": self.kind,
            f"{ATTR_PREFIX}arch": None if self.arch is None else str(self.arch),
            f"{ATTR_PREFIX}parallel": None if self.parallel is None else str(self.parallel),
            f"{ATTR_PREFIX}parent": self.parent,
            f"{ATTR_PREFIX}ops": list(self.ops),
            f"{ATTR_PREFIX}round": self.round,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Decision | None:
        kind = attrs.get(f"{ATTR_PREFIX}kind")
        if kind is None:
            return None
        arch = attrs.get(f"{ATTR_PREFIX}arch")
        parallel = attrs.get(f"{ATTR_PREFIX}parallel")
        return cls(
            kind=kind,
            arch=None if arch is None else SerialCode.parse(arch),
            parallel=None if parallel is None else ParallelCode.parse(parallel),
            parent=attrs.get(f"{ATTR_PREFIX}parent"),
            ops=tuple(attrs.get(f"{ATTR_PREFIX}ops") or ()),
            round=int(attrs.get(f"{ATTR_PREFIX}round") or 0),
        )

    @classmethod
    def of(cls, trial: FrozenTrial) -> Decision | None:
        """The decision written on ``trial`` (``None`` when it has not decided yet)."""
        return cls.from_attrs(trial.system_attrs)

    @property
    def candidate(self) -> tuple[str, str | None]:
        """Identity of the network trained: serial code and parallel code."""
        return (str(self.arch), None if self.parallel is None else str(self.parallel))


@dataclasses.dataclass(frozen=True)
class Record:
    """A decided trial as the state machine sees it."""

    number: int
    decision: Decision
    state: TrialState
    value: float | None
    finished_at: datetime | None

    @property
    def running(self) -> bool:
        return self.state in (TrialState.RUNNING, TrialState.WAITING)

    @property
    def finished(self) -> bool:
        return not self.running


@dataclasses.dataclass(frozen=True)
class Best:
    """The best network of a round or phase: the trial, its architecture and its value."""

    number: int
    arch: SerialCode
    parallel: ParallelCode | None
    value: float


@dataclasses.dataclass(frozen=True)
class SearchState:
    """Where the search stands, and what the next trial must be.

    Attributes:
        phase: ``seed``, ``serial``, ``parallel``, ``final``, ``done`` or ``failed``.
        round: the current serial round (1-based; 0 before the seed completes).
        next_kind: the kind the next trial must take, or ``None`` when it must wait.
        waiting_for: why the next trial must wait (a sentence), when it must.
        parent: the network the next trial starts from (round best, or best parallel).
        stuck: finished trials in a row without improvement in the current round/phase.
        best_serial: best network of the serial phase so far (any round).
        best_parallel: best SPNet so far.
        round_best: best of the current round (the parent of serial proposals).
        round_baselines: per round, the trial whose value the round started from.
        records: every decided, not superseded trial, in trial-number order.
        config: the :class:`~spnas.search.SearchConfig` the state was derived under.
        reason: why the search failed, for phase ``failed``.
    """

    phase: str
    round: int
    next_kind: str | None
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

    @property
    def direction(self) -> str:
        return self.config.direction

    @property
    def done(self) -> bool:
        return self.phase in ("done", "failed")

    def taken(self) -> set[tuple[str, str | None]]:
        """Candidates already decided (to avoid proposing them again)."""
        return {r.decision.candidate for r in self.records if r.decision.arch is not None}

    def of_kind(self, *kinds: str) -> list[Record]:
        return [r for r in self.records if r.decision.kind in kinds]

    @classmethod
    def from_trials(cls, trials: Sequence[FrozenTrial], config: Any) -> SearchState:
        """Replay ``trials`` under ``config`` (a :class:`SearchConfig`)."""
        return _Replay(trials, config).run()


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _records(trials: Iterable[FrozenTrial]) -> tuple[Record, ...]:
    trials = list(trials)
    # A failed trial that Optuna retried is superseded by its retry (which copies the decision).
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    records = []
    for trial in sorted(trials, key=lambda t: t.number):
        decision = Decision.of(trial)
        if decision is None or decision.kind == "idle":
            continue
        if trial.state == TrialState.FAIL and trial.number in retried:
            continue
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and not math.isfinite(value):
            value = None
        records.append(Record(trial.number, decision, trial.state, value, trial.datetime_complete))
    return tuple(records)


class _Replay:
    """One pass over the history, phase by phase."""

    def __init__(self, trials: Sequence[FrozenTrial], config: Any) -> None:
        self.config = config
        self.direction = config.direction
        self.records = _records(trials)
        self.round = 0
        self.stuck = 0
        self.best_serial: Best | None = None
        self.best_parallel: Best | None = None
        self.round_best: Best | None = None
        self.baselines: dict[int, int] = {}

    def state(
        self,
        phase: str,
        next_kind: str | None,
        waiting_for: str | None = None,
        parent: Best | None = None,
        reason: str | None = None,
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
        )

    def best_of(self, record: Record) -> Best:
        assert record.value is not None and record.decision.arch is not None
        return Best(record.number, record.decision.arch, record.decision.parallel, record.value)

    def barrier(
        self, kind: str, round_: int, phase: str, parent: Best | None
    ) -> tuple[Record | None, SearchState | None]:
        """The completed barrier trial, or the state to return while it is not complete."""
        attempts = [
            r for r in self.records if r.decision.kind == kind and r.decision.round == round_
        ]
        for record in attempts:
            if record.state == TrialState.COMPLETE and record.value is not None:
                return record, None
        running = [r for r in attempts if r.running]
        if running:
            what = f"{kind} trial {running[0].number}" + (f" (round {round_})" if round_ else "")
            return None, self.state(phase, None, f"waiting for {what} to finish", parent)
        limit = self.config.search.max_barrier_attempts
        if len(attempts) >= limit:
            numbers = ", ".join(str(r.number) for r in attempts)
            return None, self.state(
                "failed",
                None,
                reason=f"{kind} failed {len(attempts)} times (trials {numbers}); see their logs",
            )
        return None, self.state(phase, kind, parent=parent)

    def rounds_loop(
        self, records: list[Record], best: Best, stuck_limit: int, max_trials: int | None
    ) -> tuple[Best, bool, list[Record]]:
        """Replay finished trials in the order they finished; returns (best, ended?, running).

        A round ends when stuck, exhausted, or — with ``max_trials`` — when its budget of
        trials is spent (running ones included, so no trial beyond the budget is proposed).
        """
        finished = sorted(
            (r for r in records if r.finished),
            key=lambda r: (r.finished_at or datetime.max, r.number),
        )
        self.stuck = 0
        exhausted = False
        for record in finished:
            if record.decision.kind == "exhausted":
                exhausted = True
                continue
            if record.value is not None and _better(record.value, best.value, self.direction):
                best = self.best_of(record)
                self.stuck = 0
            else:
                self.stuck += 1
        running = [r for r in records if r.running]
        spent = max_trials is not None and len(records) >= max_trials
        return best, exhausted or spent or self.stuck >= stuck_limit, running

    def run(self) -> SearchState:
        config = self.config
        seed, waiting = self.barrier("seed", 0, "seed", None)
        if seed is None:
            assert waiting is not None
            return waiting
        self.best_serial = self.best_of(seed)
        baseline = seed
        # Serial rounds 1 .. n_rounds + 1; rounds 1..n_rounds end with a reignition.
        last_round = config.serial.n_rounds + 1
        for round_ in range(1, last_round + 1):
            self.round = round_
            self.baselines[round_] = baseline.number
            records = [
                r
                for r in self.records
                if r.decision.kind in ("serial", "exhausted")
                and r.decision.round == round_
                and r.decision.parallel is None
            ]
            best, stuck, running = self.rounds_loop(
                records, self.best_of(baseline), config.serial.n_stuck, config.serial.max_trials
            )
            self.round_best = best
            if _better(best.value, self.best_serial.value, self.direction):
                self.best_serial = best
            if not stuck:
                return self.state("serial", "serial", parent=best)
            if running:
                return self.state(
                    "serial",
                    None,
                    f"waiting for {len(running)} running serial trial(s) of round {round_} "
                    "before ending the round",
                    parent=best,
                )
            if round_ == last_round:
                break
            reignite, waiting = self.barrier("reignite", round_, "serial", best)
            if reignite is None:
                assert waiting is not None
                return waiting
            baseline = reignite
            if _better(reignite.value, self.best_serial.value, self.direction):
                self.best_serial = self.best_of(reignite)

        # The parallel phase stacks subnets on the final round's best network.
        self.round = last_round
        serial_best = self.round_best
        assert serial_best is not None
        pseed, waiting = self.barrier("parallel_seed", 0, "parallel", serial_best)
        if pseed is None:
            assert waiting is not None
            return waiting
        # Parallel-phase records carry a parallel code (an "exhausted" one carries the zeros).
        records = [
            r
            for r in self.records
            if r.decision.kind in ("parallel", "exhausted") and r.decision.parallel is not None
        ]
        best, stuck, running = self.rounds_loop(
            records, self.best_of(pseed), config.parallel.n_stuck, config.parallel.max_trials
        )
        self.best_parallel = best
        if not stuck:
            return self.state("parallel", "parallel", parent=best)
        if running:
            return self.state(
                "parallel",
                None,
                f"waiting for {len(running)} running parallel trial(s) before ending the phase",
                parent=best,
            )
        if not config.final.enabled:
            return self.state("done", None, parent=best)
        final, waiting = self.barrier("final", 0, "final", best)
        if final is None:
            assert waiting is not None
            return waiting
        return self.state("done", None, parent=best)
