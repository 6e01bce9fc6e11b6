"""Every use of Optuna's private API — the adapters spnas/search/_optuna.py (study and trial)
and spnas/storage/_optuna.py (storage) — checked on the Optuna versions setup.py admits: when
Optuna moves these internals, this fails first and names what moved."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState
from packaging.specifiers import SpecifierSet

from spnas import storage as storage_adapter
from spnas.search import _optuna as adapter

ROOT = Path(__file__).resolve().parents[2]


def test_installed_optuna_is_one_the_adapters_were_checked_on() -> None:
    """setup.py admits only the Optuna minor versions this module's tests passed on (5.0 and
    5.1: ``pip install .`` resolves the newest), so its range has an upper bound below the next
    unchecked minor; requirements.txt's pin lies inside it (tests/test_packaging.py)."""
    found = re.search(r'"optuna(>=[^"]+)"', (ROOT / "setup.py").read_text())
    assert found is not None, "setup.py must ask for optuna with a range"
    checked = SpecifierSet(found[1])
    assert any(spec.operator == "<" for spec in checked), f"optuna{checked}: no upper bound"
    assert optuna.__version__ in checked, (
        f"optuna {optuna.__version__} is installed, and spnas/search/_optuna.py and "
        f"spnas/storage/_optuna.py were checked on optuna{checked} only: run this module's "
        "tests on it, check every private name they use, then widen setup.py's range"
    )


@pytest.fixture(params=["inmemory", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    storage = None if request.param == "inmemory" else f"sqlite:///{tmp_path / 'a.db'}"
    return optuna.create_study(storage=storage)


def test_ids_and_storage_reach_the_trial(study: optuna.Study) -> None:
    trial = study.ask()
    storage = adapter.storage_of(study)
    storage.set_trial_system_attr(adapter.trial_id(trial), "spnas:kind", "seed")
    frozen = storage.get_trial(adapter.trial_id(trial))
    assert frozen.number == trial.number and frozen.system_attrs["spnas:kind"] == "seed"
    assert storage.get_study_id_from_name(study.study_name) == adapter.study_id(study)
    storage.set_trial_state_values(adapter.trial_id(trial), TrialState.FAIL)
    assert study.trials[0].state == TrialState.FAIL


def test_params_in_one_call(study: optuna.Study) -> None:
    trial = study.ask()
    distributions = {"blocks": IntDistribution(1, 60), "stages": IntDistribution(1, 8)}
    storage_adapter.update_trial(
        adapter.storage_of(study),
        adapter.trial_id(trial),
        params={"blocks": 9, "stages": 4},
        distributions=distributions,
    )
    assert study.trials[0].params == {"blocks": 9, "stages": 4}
    assert study.trials[0].distributions == distributions


def test_attributes_and_params_in_one_transaction(study: optuna.Study) -> None:
    """A decision and its params: all or nothing, in one commit on an RDB storage; an
    attribute written again is replaced."""
    import sqlalchemy

    trial = study.ask()
    storage = adapter.storage_of(study)
    backend = getattr(storage, "_backend", storage)
    commits: list[int] = []
    if isinstance(backend, optuna.storages.RDBStorage):
        sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    distributions = {"blocks": IntDistribution(1, 60)}
    storage_adapter.update_trial(
        storage,
        adapter.trial_id(trial),
        system_attrs={"spnas:decision": {"round": 1}, "spnas:kind": "serial"},
        params={"blocks": 9},
        distributions=distributions,
    )
    if isinstance(backend, optuna.storages.RDBStorage):
        assert len(commits) == 1
    storage_adapter.update_trial(
        storage, adapter.trial_id(trial), system_attrs={"spnas:kind": "idle"}
    )
    (frozen,) = study.get_trials()
    assert frozen.system_attrs == {"spnas:decision": {"round": 1}, "spnas:kind": "idle"}
    assert frozen.params == {"blocks": 9} and frozen.distributions == distributions


def test_params_of_a_finished_trial_are_refused(study: optuna.Study) -> None:
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage_adapter.update_trial(
            adapter.storage_of(study),
            adapter.trial_id(trial),
            params={"blocks": 9},
            distributions={"blocks": IntDistribution(1, 60)},
            system_attrs={"spnas:kind": "seed"},
        )
    assert study.trials[0].params == {}
    assert "spnas:kind" not in study.trials[0].system_attrs


def test_heartbeats(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=2, grace_period=4
    )
    study = optuna.create_study(storage=storage)
    assert storage_adapter.is_heartbeat_enabled(adapter.storage_of(study))
    assert storage_adapter.heartbeat_interval(adapter.storage_of(study)) == 2.0
    assert not storage_adapter.is_heartbeat_enabled(adapter.storage_of(optuna.create_study()))


def test_the_optimize_loop_is_told_apart(study: optuna.Study) -> None:
    seen: list[bool] = []
    study.optimize(lambda t: seen.append(adapter.in_optimize_loop(study)) or 0.0, n_trials=1)
    assert seen == [True]
    assert not adapter.in_optimize_loop(study)
    # Per thread: another thread asking while this one optimizes is ask-and-tell.
    other: list[bool] = []
    thread = threading.Thread(target=lambda: other.append(adapter.in_optimize_loop(study)))
    thread.start()
    thread.join()
    assert other == [False]


def test_whole_study_behind_hyperband_brackets(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=optuna.pruners.HyperbandPruner())
    assert adapter.whole_study(study) is study
    views: list[optuna.Study] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):  # type: ignore[override]
            views.append(study)
            return super().sample_independent(study, trial, name, distribution)

    study.sampler = Spy()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert views and adapter.whole_study(views[0]) is study


def test_a_state_changes_only_from_the_state_named(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}")
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({})
    waiting = adapter.trial_id(study.get_trials()[0])
    claim = (TrialState.WAITING, TrialState.RUNNING, "datetime_start")
    assert storage_adapter.change_trial_state_if(storage, waiting, *claim)
    assert not storage_adapter.change_trial_state_if(storage, waiting, *claim)  # RUNNING now
    trial = storage.get_trial(waiting)
    assert trial.state == TrialState.RUNNING and trial.datetime_start is not None
    fail = (TrialState.RUNNING, TrialState.FAIL, "datetime_complete")
    assert storage_adapter.change_trial_state_if(storage, waiting, *fail)
    assert storage.get_trial(waiting).state == TrialState.FAIL
    assert storage.get_trial(waiting).datetime_complete is not None
