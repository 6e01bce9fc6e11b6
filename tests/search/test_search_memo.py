"""What replays keep of the history's head between decisions (``spnas.search._memo``).

A decision replays the history with the memo of its study's head; the state must be the one
a replay without it derives, whatever changed after the head (the random histories of
``test_search_records.py`` check that broadly). These cases pin down what the memo may keep.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from optuna.trial import TrialState
from search_doubles import make_config

from spnas.arch import SerialCode
from spnas.search import Decision, SearchState, TrialKind
from spnas.search._memo import ReplayMemo
from spnas.search._state import Record

SEED = SerialCode.parse("BB(11,d1,d1,d1)")
CHILD = SerialCode.parse("BB(11,d11,d1,d1)")
OTHER = SerialCode.parse("BB(11,d1,d11,d1)")
T0 = datetime.datetime(2026, 1, 1)


def _record(number: int, decision: Decision, state: TrialState, value: float | None = None):
    finished = None if state in (TrialState.RUNNING, TrialState.WAITING) else T0
    if finished is not None:
        finished += datetime.timedelta(minutes=number)
    return Record(number, decision, state, value, finished)


def _head(child_value: float) -> list[Record]:
    """The seed, the round's two controls (20.0, 20.2), and a child worth ``child_value``."""
    control = Decision(TrialKind.CONTROL, arch=SEED, parent=0, round=1)
    return [
        _record(0, Decision(TrialKind.SEED, arch=SEED), TrialState.COMPLETE, 20.0),
        _record(1, control, TrialState.COMPLETE, 20.0),
        _record(2, Decision(**{**vars(control), "repeat": 1}), TrialState.COMPLETE, 20.2),
        _record(3, _child(CHILD), TrialState.COMPLETE, child_value),
    ]


def _child(arch: SerialCode, repeat: int | None = None) -> Decision:
    return Decision(TrialKind.SERIAL, arch=arch, parent=0, ops=("op",), round=1, repeat=repeat)


def _replays(tmp_path: Path, head: list[Record], *histories: list[Record]) -> None:
    """Replay each history with one memo fixed on ``head``: each state is the cold one."""
    config = make_config(tmp_path, serial={"n_stuck": 5, "n_rounds": 1})
    memo = ReplayMemo()
    memo.fix(tuple(head))
    for history in histories:
        warm = SearchState.from_records(history, config, "maximize", memo)
        assert warm._fixed is not None  # the memo served
        assert warm == SearchState.from_records(history, config, "maximize")


def test_a_rejection_on_failed_re_evaluations_after_the_head_is_not_kept(tmp_path: Path) -> None:
    """A winner whose re-evaluation failed every attempt is rejected; the attempts are after
    the head (a trial below them still runs), so one of them may still be retried (``spnas
    resume``): the re-evaluation is then running again, and the winner waits for it."""
    head = _head(25.0)
    running = _record(4, _child(OTHER), TrialState.RUNNING)
    failed = [_record(n, _child(CHILD, 1), TrialState.FAIL) for n in (5, 6, 7)]
    retry = _record(8, _child(CHILD, 1), TrialState.WAITING)
    before = [*head, running, *failed]
    after = [*head, running, *failed[:2], retry]
    _replays(tmp_path, head, before, after)
    config = make_config(tmp_path, serial={"n_stuck": 5, "n_rounds": 1})
    rejected = SearchState.from_records(before, config, "maximize")
    assert (rejected.round_best.number, rejected.stuck) == (1, 1)
    # Judging stops at the winner again: its re-evaluation runs (trial 8).
    assert SearchState.from_records(after, config, "maximize").stuck == 0


def test_a_judgement_goes_on_from_where_the_head_ends(tmp_path: Path) -> None:
    """Children that finish after the head are judged after the kept ones, in finish order."""
    head = _head(20.1)  # within the noise: rejected, and kept so
    later = [_record(n, _child(OTHER), TrialState.COMPLETE, 20.0) for n in (4, 5)]
    _replays(tmp_path, head, [*head, later[0]], [*head, *later])
    config = make_config(tmp_path, serial={"n_stuck": 5, "n_rounds": 1})
    assert SearchState.from_records([*head, *later], config, "maximize").stuck == 3


def test_a_memo_serves_only_the_history_it_was_kept_for(tmp_path: Path) -> None:
    head = _head(25.0)
    config = make_config(tmp_path, serial={"n_stuck": 5, "n_rounds": 1})
    memo = ReplayMemo()
    memo.fix(tuple(head))
    other = [*head[:3], _record(3, _child(OTHER), TrialState.COMPLETE, 19.0)]
    state = SearchState.from_records(other, config, "maximize", memo)
    assert state._fixed is None
    assert state == SearchState.from_records(other, config, "maximize")
