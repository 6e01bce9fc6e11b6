"""``spnas.search.launch_workers``' exit status (the processes themselves run in
``test_search_preemption.py`` and ``test_search_verify_cli.py``; the devices each worker gets
in ``tests/engines/test_distributed.py``)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from spnas.search import STOPPED_EXIT, Launched

TERM, INT = int(signal.SIGTERM), int(signal.SIGINT)


def _state(phase: str) -> SimpleNamespace:
    return SimpleNamespace(phase=phase, done=phase in ("done", "failed"))


@pytest.mark.parametrize(
    ("phase", "received", "codes", "expected"),
    [
        ("done", (), (0, 0), 0),
        ("failed", (), (0, 0), 1),
        ("serial", (), (0, 1), 1),  # workers gone before the search was done
        (None, (), (1,), 1),  # the study was never read
        # Preempted: every worker re-queued its trial: 128 + the signal, like them.
        ("serial", (TERM,), (128 + TERM, 128 + TERM), 128 + TERM),
        ("serial", (INT, TERM), (128 + INT, 0), 128 + INT),
        ("done", (TERM,), (0, 128 + TERM), 0),  # done anyway
        ("serial", (TERM,), (128 + TERM, 1), 1),  # a worker failed while stopping
    ],
)
def test_the_exit_status_says_done_stopped_or_failed(
    phase: str | None, received: tuple[int, ...], codes: tuple[int, ...], expected: int
) -> None:
    state = None if phase is None else _state(phase)
    assert STOPPED_EXIT == 128
    assert Launched(state, received, codes).exit_code() == expected  # type: ignore[arg-type]
