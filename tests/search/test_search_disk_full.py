"""A full disk pauses the workers (spnas.search._disk): the trial that failed on it is retried
with its decision, not counted as a failed attempt, and the search goes on by itself once there
is space; a disk full for longer than ``search.disk_full_wait_seconds`` stops the worker with an
error naming the directories, the trial still queued."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState
from search_doubles import FakeEngine, make_config

from spnas.search import (
    Objective,
    SearchState,
    _disk,
    create_search_study,
    load_search_study,
    run_worker,
)
from spnas.search._disk import is_disk_full, local_dirs
from spnas.storage import StorageError


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_disk, "FIRST_WAIT_S", 0.05)
    monkeypatch.setattr(_disk, "MAX_WAIT_S", 0.2)


def _run(tmp_path: Path, search_assets: Path, full_disk_calls: int, wait: float):
    # Two attempts per barrier: more full-disk failures than that would end the search as
    # failed if they counted.
    config = make_config(
        tmp_path,
        "full",
        search_assets,
        search={"max_barrier_attempts": 2, "disk_full_wait_seconds": wait},
    )
    create_search_study(config)
    engine = FakeEngine(sleep=0.0, full_disk_calls=full_disk_calls)
    objective = Objective(config, engine=engine)

    def run() -> SearchState:  # up to the first trial that completes: the seed barrier
        return run_worker("full", config.study.storage, objective=objective, max_trials=1)

    return config, engine, run


def test_a_full_disk_pauses_the_search_which_goes_on_by_itself(
    tmp_path: Path, search_assets: Path
) -> None:
    config, engine, run = _run(tmp_path, search_assets, full_disk_calls=4, wait=60)
    state = run()
    assert state.phase not in ("failed", "done"), state.reason
    trials = load_search_study("full", config.study.storage)[0].get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 + [TrialState.COMPLETE]
    # Each failure was retried with its decision: the seed barrier, five times in a row.
    assert [kind for kind, _, _ in engine.calls] == ["seed"] * 5
    assert trials[-1].system_attrs["retry_history"] == [0, 1, 2, 3]


def test_a_disk_full_for_too_long_stops_the_worker_with_its_trial_queued(
    tmp_path: Path, search_assets: Path
) -> None:
    config, _, run = _run(tmp_path, search_assets, full_disk_calls=1000, wait=0.3)
    with pytest.raises(StorageError, match=r"disk_full_wait_seconds=0\.3") as raised:
        run()
    assert str(Path(config.study.workdir)) in str(raised.value)
    trials = load_search_study("full", config.study.storage)[0].get_trials()
    assert trials[-1].state == TrialState.WAITING  # the next worker trains it
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_full_disk_recognised_by_errno_or_by_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = local_dirs(tmp_path / "work", tmp_path / "artifacts")
    assert dirs == [tmp_path / "work", tmp_path / "artifacts"]
    assert local_dirs(tmp_path, "s3://bucket/prefix") == [tmp_path]
    assert is_disk_full(RuntimeError("x"), dirs) is False
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("file write failed") from exc
    except RuntimeError as exc:
        assert is_disk_full(exc, dirs)
    # torch.save reports a full disk without errno: the free space tells.
    with monkeypatch.context() as patch:
        patch.setattr(_disk, "MIN_FREE_BYTES", 2 * shutil.disk_usage(tmp_path).free)
        assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672]"), dirs)
