"""The records of finished trials, parsed once per sampler instead of at every decision.

Every decision replays the whole history (:meth:`SearchState.from_records
<spnas.search.SearchState.from_records>`); parsing every trial's decision again
(:func:`~spnas.search._state.trial_record`) was most of a decision's time, about 85 % at 5,000
trials. A finished trial (COMPLETE, PRUNED, FAIL) cannot change: Optuna refuses to update its
state, values or attributes (``UpdateFinishedTrialError``), and spnas's own conditional state
changes (:func:`~spnas.storage.change_trial_state_if`) start from WAITING or RUNNING only. So
its record is kept, keyed by its storage id and its state; a running or waiting trial, whose
decision may be written at any moment, is parsed again at every look. The state itself is still
derived from the trials alone: a restarted worker, its cache empty, decides the same.

The history's head — its first trials, up to the lowest one not finished — is kept whole, as
the tuple of its records: a look walks only the trials after it (the few running, the new),
not the thousands before. A trial of the head that a later trial retries (Optuna's
``retry_history``) leaves the records (:func:`~spnas.search._state.trial_records`); the head
is then read again.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from spnas.search._memo import ReplayMemo
from spnas.search._optuna import storage_of, study_id, trial_id
from spnas.search._state import (
    Record,
    SearchState,
    retried_numbers,
    trial_record,
    trial_records,
)

#: The most finished trials whose records are kept per study (a record takes about 1 kB).
#: Past it, the trials finished later are parsed at every look, as without a cache: keeping
#: the first ones instead of cycling through all of them is what still saves their parsing.
MAX_RECORDS = 100_000

_Finished = dict[tuple[int, TrialState], Record | None]


@dataclasses.dataclass(frozen=True)
class _Head:
    """The first ``count`` trials of a study's history, every one finished (so fixed): their
    records, and the trial numbers their retries name (``retry_history``)."""

    count: int = 0
    records: tuple[Record, ...] = ()
    retried: frozenset[int] = frozenset()


@dataclasses.dataclass
class _StudyRecords:
    """What is kept of one study: the records of its finished trials, its head, and what
    replays derived from the head (:mod:`spnas.search._memo`; a head read anew gets a new
    memo)."""

    finished: _Finished = dataclasses.field(default_factory=dict)
    head: _Head = _Head()
    memo: ReplayMemo = dataclasses.field(default_factory=ReplayMemo)


class RecordCache:
    """The records of the finished trials of the studies one sampler decides for.

    Per study: storage ids are unique only within one storage, so the records are kept per
    storage object (held weakly: a storage that is gone takes its records with it, and a new
    one at the same address starts empty) and per study id and name.

    Args:
        max_records: the most finished trials kept per study (:data:`MAX_RECORDS`).
    """

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._max = max_records
        self._studies: weakref.WeakKeyDictionary[object, dict[tuple[int, str], _StudyRecords]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # one sampler may serve threads (optimize's n_jobs)

    def __reduce__(self) -> tuple[type[RecordCache], tuple[int]]:
        # Pickled empty (a sampler sent to another process): the records are keyed by
        # storage objects, meaningless elsewhere.
        return RecordCache, (self._max,)

    def reader(self, study: Study) -> RecordReader:
        """A reader for one look at ``study``'s trials (see :class:`RecordReader`)."""
        with self._lock:
            of_storage = self._studies.setdefault(storage_of(study), {})
            kept = of_storage.setdefault((study_id(study), study.study_name), _StudyRecords())
        return RecordReader(kept, self._max)


class RecordReader:
    """Reads the records of trials during one look at a study: finished trials from the
    study's cache (parsed once per sampler), the others once per reader.

    Within one look the same running trials are replayed many times (a decision, then one
    replay per trial decided ahead for the line behind it): each is parsed once, remembered
    by the object read (kept, so that its address stays its own). A new look takes a new
    reader, so a trial that decided or finished since is read as it is now.
    """

    def __init__(self, kept: _StudyRecords, max_records: int) -> None:
        self._kept = kept
        self._finished = kept.finished
        self._max = max_records
        self._unfinished: dict[int, tuple[FrozenTrial, Record | None]] = {}

    def records(
        self, trials: Iterable[FrozenTrial], *, apart: FrozenTrial | None = None
    ) -> tuple[Record, ...]:
        """:func:`~spnas.search._state.trial_records` of ``trials``, parsing what it must.

        ``trials`` read as a whole history in number order (as :meth:`optuna.Study.get_trials`
        returns it) start from the study's kept head; any other collection is read whole.
        ``apart`` (one of ``trials``) is parsed and never kept, nor anything after it: a
        trial as it will be stored (:meth:`SPNASSampler.after_trial
        <spnas.search.SPNASSampler.after_trial>`), whose finish time the storage sets anew.
        """
        trials = trials if isinstance(trials, Sequence) else list(trials)
        head = self._kept.head
        if not _continues(trials, head.count):
            return trial_records(trials, self._parse_apart(apart))
        rest = trials[head.count :]
        retried = retried_numbers(rest)
        if any(n < head.count and n not in head.retried for n in retried):
            # A trial of the head was retried since it was kept: read the history again.
            head, rest = _Head(), trials
            retried = retried_numbers(rest)
        record = self._parse_apart(apart)
        found = [
            record(t) for t in rest if not (t.state == TrialState.FAIL and t.number in retried)
        ]
        end = len(rest) if apart is None else max(0, apart.number - head.count)
        self._extend_head(head, rest[:end], found, retried)
        return head.records + tuple(r for r in found if r is not None)

    def _extend_head(
        self,
        head: _Head,
        rest: Sequence[FrozenTrial],
        found: list[Record | None],
        retried: set[int],
    ) -> None:
        """Keep ``head`` grown by the finished trials at the start of ``rest`` (``found``:
        the records of ``rest`` that count, ``None`` where a trial has none; ``retried``: the
        trial numbers that the retries in ``rest`` name, whose failures ``found`` left out)."""
        grown = 0
        limit = self._max - head.count
        while grown < len(rest) and grown < limit and rest[grown].state.is_finished():
            grown += 1
        if not grown and self._kept.head is head:
            return
        # The records of the trials kept: ``found`` skipped the retried failures of ``rest``.
        count = head.count + grown
        records = head.records + tuple(r for r in found if r is not None and r.number < count)
        accounted = head.retried | {n for n in retried if n < count}
        if head is not self._kept.head:  # read anew: what was derived from the old one goes
            self._kept.memo = ReplayMemo()
        self._kept.head = _Head(count, records, accounted)
        self._kept.memo.fix(records)

    def state(
        self,
        trials: Iterable[FrozenTrial],
        config: Any,
        direction: str,
        *,
        apart: FrozenTrial | None = None,
    ) -> SearchState:
        """The search state of the history ``trials``: :meth:`records` replayed
        (:meth:`SearchState.from_records <spnas.search.SearchState.from_records>`) with the
        study's memo, which keeps what replays derive from the history's head."""
        records = self.records(trials, apart=apart)
        return SearchState.from_records(records, config, direction, self._kept.memo)

    def unsettled(self, trials: Sequence[FrozenTrial]) -> Sequence[FrozenTrial]:
        """The trials of the history ``trials`` that may not be finished: those after the kept
        head (all of ``trials`` when they are not the history the head was kept of)."""
        count = self._kept.head.count
        return trials[count:] if _continues(trials, count) else trials

    def _parse_apart(self, apart: FrozenTrial | None) -> Callable[[FrozenTrial], Record | None]:
        if apart is None:
            return self.record
        return lambda t: trial_record(t) if t is apart else self.record(t)

    def record(self, trial: FrozenTrial) -> Record | None:
        """:func:`~spnas.search._state.trial_record` of ``trial``."""
        if not trial.state.is_finished():
            seen = self._unfinished.get(id(trial))
            if seen is None:
                seen = self._unfinished[id(trial)] = (trial, trial_record(trial))
            return seen[1]
        key = (trial_id(trial), trial.state)
        try:
            return self._finished[key]
        except KeyError:
            found = trial_record(trial)
            if len(self._finished) < self._max:
                self._finished[key] = found
            return found


def _continues(trials: Sequence[FrozenTrial], count: int) -> bool:
    """Whether ``trials`` read as a study's whole history, numbered 0, 1, 2 … in order, past
    its first ``count`` trials (Optuna numbers a study's trials so; a whole history read from
    the study is in number order)."""
    if not trials:
        return count == 0
    if len(trials) < count or (count and trials[count - 1].number != count - 1):
        return False
    numbers = [t.number for t in trials[count:]]
    return numbers == list(range(count, count + len(numbers)))
