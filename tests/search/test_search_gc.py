"""Leftovers of killed workers and storage outages (spnas.search._gc, ``spnas gc``): weights no
trial can use, half-written uploads and trial scratch files are deleted; nothing a live or
complete trial uses is."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_doubles import config_dict

from spnas.cli import main
from spnas.search import (
    WEIGHTS_ATTR,
    SearchConfig,
    collect_garbage,
    create_search_study,
    load_search_study,
)
from spnas.search._artifacts import (
    DASHBOARD_ARTIFACTS_PREFIX,
    collect_orphan_weights,
    upload_weights,
)
from spnas.search._objective import trial_dir
from spnas.search._signals import requeue_interrupted
from spnas.storage import make_artifact_store


class _StorageDown(RuntimeError):
    """Stands for the error of a storage call while the database restarts."""


def _weights(path: Path, text: str = "weights") -> Path:
    path.write_text(text)
    return path


def _listed(study: optuna.Study) -> dict[str, object]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {
        k.rsplit(":", 1)[1]: json.loads(v)
        for k, v in attrs.items()
        if k.startswith(DASHBOARD_ARTIFACTS_PREFIX)
    }


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("failing", ["set_study_system_attr", "set_user_attr"])
def test_an_upload_whose_record_fails_deletes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store = make_artifact_store(tmp_path / "artifacts")
    study = optuna.create_study()
    trial = study.ask()
    target = study._storage if failing == "set_study_system_attr" else trial

    def down(*args: object, **kwargs: object) -> None:
        raise _StorageDown("server closed the connection unexpectedly")

    monkeypatch.setattr(target, failing, down)
    with pytest.raises(_StorageDown):
        upload_weights(trial, store, _weights(tmp_path / "model.pth"), "0" * 64)
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_orphan_weights_are_deleted_and_used_ones_kept(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    store = make_artifact_store(artifacts)
    study = optuna.create_study()
    weights = _weights(tmp_path / "model.pth")

    complete = study.ask()
    kept = upload_weights(complete, store, weights, "0" * 64)
    study.tell(complete, 1.0)
    failed = study.ask()  # its result was lost: failed and retried elsewhere
    lost = upload_weights(failed, store, weights, "0" * 64)
    study.tell(failed, state=TrialState.FAIL)
    running = study.ask()  # between storing its weights and recording them
    in_flight = upload_weights(running, store, weights, "0" * 64)
    running.storage.set_trial_user_attr(running._trial_id, WEIGHTS_ATTR, None)
    old_stray = _weights(artifacts / "killed-before-listing")
    young_stray = _weights(artifacts / "being-listed")
    killed_tmp = _weights(artifacts / f"{kept}.1234.tmp")
    for path in (old_stray, killed_tmp):
        _age(path, 7200)

    removed = collect_orphan_weights(study, store)

    assert sorted(p.name for p in artifacts.iterdir()) == sorted(
        [kept, in_flight, young_stray.name]
    )
    assert set(removed) == {lost, old_stray.name, killed_tmp.name}
    listed = _listed(study)
    assert listed[lost] is None, "a deleted artifact must not stay listed in the dashboard"
    assert listed[kept] is not None and listed[in_flight] is not None
    # A second pass finds nothing.
    assert collect_orphan_weights(study, store) == []


def _search_study(tmp_path: Path, search_assets: Path) -> tuple[optuna.Study, SearchConfig]:
    config = SearchConfig.from_dict(config_dict(tmp_path, "gc", search_assets))
    create_search_study(config)
    return load_search_study(config.study.name, config.study.storage)


def test_finished_trials_folders_are_cleaned_running_ones_kept(
    tmp_path: Path, search_assets: Path
) -> None:
    study, config = _search_study(tmp_path, search_assets)
    finished, running = study.ask(), study.ask()
    study.tell(finished, state=TrialState.FAIL)  # its worker was killed mid-training
    for trial in (finished, running):
        folder = trial_dir(config.study.workdir, trial.number)
        folder.mkdir(parents=True)
        _weights(folder / "model_final.pth")
        _weights(folder / "metrics.json", "{}")

    garbage = collect_garbage(study, config, make_artifact_store(config.study.artifacts))

    assert garbage.trial_dirs == (finished.number,)
    assert not (trial_dir(config.study.workdir, finished.number) / "model_final.pth").exists()
    assert (trial_dir(config.study.workdir, finished.number) / "metrics.json").exists()
    assert (trial_dir(config.study.workdir, running.number) / "model_final.pth").exists()


def test_spnas_gc_deletes_old_killed_uploads(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = _search_study(tmp_path, search_assets)
    artifacts = Path(config.study.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    killed = _weights(artifacts / "0f0f.4321.tmp")
    _age(killed, 120)
    args = ["gc", "--study", "gc", "--storage", config.study.storage]

    assert main([*args]) == 0  # younger than the default hour: may be an upload in progress
    assert killed.exists()
    assert main([*args, "--min-age", "60"]) == 0
    assert not killed.exists()
    assert "deleted 1 artifact(s)" in capsys.readouterr().out
    assert main([*args, "--min-age", "-1"]) == 2


def test_a_trial_the_database_lost_is_not_retried(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'lost.db'}")
    study.ask()
    # A crash with asynchronous commit lost the trial's creation: its id names no row.
    assert requeue_interrupted(study, 10_000) is None
    assert len(study.get_trials()) == 1
