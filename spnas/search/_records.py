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
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from spnas.search._optuna import storage_of, study_id, trial_id
from spnas.search._state import Record, trial_record, trial_records

#: The most finished trials whose records are kept per study (a record takes about 1 kB).
#: Past it, the trials finished later are parsed at every look, as without a cache: keeping
#: the first ones instead of cycling through all of them is what still saves their parsing.
MAX_RECORDS = 100_000

_Finished = dict[tuple[int, TrialState], Record | None]


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
        self._studies: weakref.WeakKeyDictionary[object, dict[tuple[int, str], _Finished]] = (
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
            finished = of_storage.setdefault((study_id(study), study.study_name), {})
        return RecordReader(finished, self._max)


class RecordReader:
    """Reads the records of trials during one look at a study: finished trials from the
    study's cache (parsed once per sampler), the others once per reader.

    Within one look the same running trials are replayed many times (a decision, then one
    replay per trial decided ahead for the line behind it): each is parsed once, remembered
    by the object read (kept, so that its address stays its own). A new look takes a new
    reader, so a trial that decided or finished since is read as it is now.
    """

    def __init__(self, finished: _Finished, max_records: int) -> None:
        self._finished = finished
        self._max = max_records
        self._unfinished: dict[int, tuple[FrozenTrial, Record | None]] = {}

    def records(self, trials: Iterable[FrozenTrial]) -> tuple[Record, ...]:
        """:func:`~spnas.search._state.trial_records` of ``trials``, parsing what it must."""
        return trial_records(trials, self.record)

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
