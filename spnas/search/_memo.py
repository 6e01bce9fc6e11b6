"""What a replay of a study's history computed over the history's fixed head, kept for the next.

Every decision replays the whole history (:meth:`SearchState.from_records
<spnas.search.SearchState.from_records>`). The history's head (its trials up to the first one
not finished, :mod:`spnas.search._records`) cannot change, so whatever a replay derives from
the head alone is the same at the next decision: the records of a kind or a round, a round's
finished candidates in the order they finished, how judging them in that order ended, the
networks already decided. A :class:`ReplayMemo` keeps these for one head as it grows, so a
decision walks only the trials after the head (a few running, the new) instead of thousands.

Correctness rests on three rules:

- A memo only serves a replay whose records start with the memo's head (:meth:`ReplayMemo.use`
  compares them); anything else (another collection of trials, a head read anew after a retry)
  replays without it. A head that is read anew gets a new memo (the reader's).
- Every kept value is a function of the head's records alone, computed under one config and
  direction (another clears the memo).
- A judgement is kept only up to the first candidate whose verdict could still change: one
  finished after the head, or whose re-evaluation is not fixed yet (:meth:`_Replay.rounds_loop
  <spnas.search._state._Replay.rounds_loop>`).

The memo changes while a replay uses it: one replay at a time (a sampler may serve threads);
a replay that finds it busy goes without.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import operator
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Protocol


class _Record(Protocol):
    """What the memo reads of a record (:class:`~spnas.search._state.Record`)."""

    number: int
    finish_order: tuple[Any, int]
    decision: Any


_NUMBER = operator.attrgetter("number")
_FINISH = operator.attrgetter("finish_order")


@dataclasses.dataclass
class _Selection:
    """The head's records that pass one test, in number order (``scanned``: head records
    read so far)."""

    scanned: int = 0
    items: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Judgement:
    """Where judging a round's candidates in finish order stood after its fixed prefix: the
    inputs it started from (``start``), the candidates judged (``prefix``), and what judging
    them left (``outcome``)."""

    start: Hashable
    prefix: list[Any]
    outcome: Any


@dataclasses.dataclass
class RoundMemo:
    """A round's head candidates (``counted`` so far): its re-evaluations (``repeats``, number
    order), its other candidates in finish order (``finished``), and its kept judgement."""

    counted: int = 0
    repeats: list[Any] = dataclasses.field(default_factory=list)
    finished: list[Any] = dataclasses.field(default_factory=list)
    judgement: Judgement | None = None

    def update(self, fixed: Sequence[Any], is_repeat: Callable[[Any], bool]) -> None:
        """Take in the round's head candidates past those counted (``fixed``: all of them, in
        number order; every one finished)."""
        if self.counted > len(fixed):  # kept from a later head: start again
            self.counted, self.repeats, self.finished, self.judgement = 0, [], [], None
        for record in fixed[self.counted :]:
            if is_repeat(record):
                self.repeats.append(record)
            else:
                bisect.insort(self.finished, record, key=_FINISH)
        self.counted = len(fixed)


class ReplayMemo:
    """What replays computed over one head of one study's history (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._head: tuple[Any, ...] = ()
        self._under: tuple[Any, str] | None = None
        self._selections: dict[Hashable, _Selection] = {}
        self._rounds: dict[Hashable, RoundMemo] = {}
        self._taken: dict[Hashable, tuple[int, set[Any]]] = {}

    def fix(self, head: tuple[Any, ...]) -> None:
        """The head's records: those of the previous head and the trials that finished since
        (set by :class:`~spnas.search._records.RecordReader`)."""
        self._head = head

    @contextlib.contextmanager
    def use(self, records: Sequence[Any], config: Any, direction: str) -> Iterator[FixedHead]:
        """Lend the memo to one replay of ``records`` under ``config`` and ``direction``: the
        :class:`FixedHead` says how many leading records it serves (0: none — the records do
        not start with the head, or another replay holds the memo)."""
        if not self._lock.acquire(blocking=False):
            yield FixedHead(self, 0)
            return
        try:
            under = (config, direction)
            if (
                self._under is None
                or self._under[1] != direction
                or (self._under[0] is not config and self._under[0] != config)
            ):
                self._selections.clear()
                self._rounds.clear()
                self._under = under
            count = len(self._head)
            if not count or len(records) < count or tuple(records[:count]) != self._head:
                yield FixedHead(self, 0)
            else:
                yield FixedHead(self, count, self._head[-1].number)
        finally:
            self._lock.release()


@dataclasses.dataclass(frozen=True)
class FixedHead:
    """One replay's view of a :class:`ReplayMemo`: its first ``count`` records are the memo's
    head, so fixed; ``last`` is the number of the head's last trial (-1: no head), so a record
    numbered up to it is fixed."""

    memo: ReplayMemo | None
    count: int
    last: int = -1

    def select(
        self, records: Sequence[Any], key: Hashable, test: Callable[[Any], bool]
    ) -> list[Any]:
        """The records that pass ``test`` (named by ``key``: one key, one test), in number
        order; only the head's records that are new since the last replay are tested."""
        if self.memo is None or not self.count:
            return [r for r in records if test(r)]
        selection = self.memo._selections.setdefault(key, _Selection())
        if selection.scanned > self.count:  # kept from a later head than this replay's
            return [r for r in records if test(r)]
        for record in records[selection.scanned : self.count]:
            if test(record):
                selection.items.append(record)
        selection.scanned = self.count
        return selection.items + [r for r in records[self.count :] if test(r)]

    def fixed_in(self, records: Sequence[Any]) -> int:
        """How many leading ``records`` (a selection of this replay's, in number order) are
        the head's."""
        return bisect.bisect_right(records, self.last, key=_NUMBER) if self.count else 0

    def round(self, key: Hashable) -> RoundMemo | None:
        """The memo of the round ``key`` names (``None``: no memo)."""
        if self.memo is None or not self.count:
            return None
        return self.memo._rounds.setdefault(key, RoundMemo())

    def collect(
        self, records: Sequence[Any], key: Hashable, values: Callable[[Any], Any | None]
    ) -> set[Any]:
        """The set of ``values(record)`` over ``records`` (``None`` left out); the head's part
        is kept, so only new records are read. A new set: the caller may change it."""
        memo = self.memo
        if memo is None or not self.count or not memo._lock.acquire(blocking=False):
            return _values_of(records, values)
        try:
            scanned, kept = memo._taken.get(key, (0, set()))
            if scanned > self.count:  # kept from a later head than this replay's
                return _values_of(records, values)
            kept |= _values_of(records[scanned : self.count], values)
            memo._taken[key] = (self.count, kept)
            found = set(kept)
        finally:
            memo._lock.release()
        return found | _values_of(records[self.count :], values)


def _values_of(records: Sequence[Any], values: Callable[[Any], Any | None]) -> set[Any]:
    return {v for r in records if (v := values(r)) is not None}


def merge_finished(first: list[Any], then: list[Any]) -> list[Any]:
    """Two lists each in finish order, as one (``first`` is not changed)."""
    if not then:
        return first
    if not first or first[-1].finish_order <= then[0].finish_order:
        return first + then
    return sorted(first + then, key=_FINISH)  # two runs: one merge
