"""The objective (weights through the artifact store, real reignition), storage URLs, study
creation, the study YAML, and ``spnas status``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from search_doubles import PREFIX, SEED_ARCH, config_dict, make_config, torchvision_layout

import spnas.cli
from spnas.exceptions import ConfigError
from spnas.modeling import SerialNet
from spnas.search import (
    CONFIG_ATTR,
    WEIGHTS_ATTR,
    SearchConfig,
    create_search_study,
    get_decision,
    load_search_study,
)
from spnas.storage import StorageError, make_storage, redact


# --------------------------------------------------------------------------- the test double
def test_seed_weights_double_has_torchvision_resnet18_layout() -> None:
    import torchvision

    ours = torchvision_layout(SerialNet(SEED_ARCH, base_width=64).state_dict())
    theirs = torchvision.models.resnet18().state_dict()
    assert set(ours) == set(theirs)
    wrong = [k for k in theirs if not k.startswith("fc.") and ours[k].shape != theirs[k].shape]
    assert not wrong


# --------------------------------------------------------------------------- the objective
def test_objective_runs_a_search_in_process(finished_search: Any) -> None:
    config, engine, state = finished_search
    assert state.phase == "done"
    study, _ = load_search_study(config.study.name, config.study.storage)
    trials = study.get_trials()
    kinds = [get_decision(t).kind for t in trials]
    assert kinds[0] == "seed" and "reignite" in kinds and "parallel" in kinds
    # The engine was called once per trained trial, with the kind the sampler decided.
    trained = [t for t in trials if get_decision(t).kind not in ("idle", "exhausted")]
    assert [call[0] for call in engine.calls] == [get_decision(t).kind for t in trained]
    for trial in trained:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        attrs = trial.user_attrs
        decision = get_decision(trial)
        # The trial's CPU seconds: its own work, at most every core for its whole span.
        span = (trial.datetime_complete - trial.datetime_start).total_seconds()
        assert 0 < attrs["cpu_s"] <= span * (os.cpu_count() or 1) + 0.05
        if decision.kind == "verify":
            # Retrained from scratch: crop pretraining, then detection; no weights kept.
            assert attrs["pretrain_iters"] > 0 and attrs["train_iters"] == 1
            assert WEIGHTS_ATTR not in attrs
            continue
        assert attrs["kind"] == decision.kind and attrs["arch"] == str(decision.arch)
        assert attrs["AP"] == trial.value and attrs["gmacs"] > 0 and attrs["params_m"] > 0
        assert WEIGHTS_ATTR in attrs
        # Weights travel through the artifact store: every child inherits from its parent
        # (measured: 42 % for a chain of 6 morphisms from the baseline, 4 of them new blocks;
        # a child that inherited nothing would be near 0).
        assert 0.35 < attrs["inherited_fraction"] <= 1.0
        if decision.kind == "reignite":
            assert attrs["inherited_fraction"] == 1.0
        trial_dir = Path(config.study.workdir) / "trials" / f"{trial.number:05d}"
        assert not list(trial_dir.glob("*.pth")), "weights belong in the artifact store"
    # The reignition really pretrained the round's best on object crops.
    reignite = next(t for t in trials if get_decision(t).kind == "reignite")
    sidecar = (
        Path(config.study.workdir)
        / "trials"
        / f"{reignite.number:05d}"
        / "reignited_backbone.pth.json"
    )
    assert json.loads(sidecar.read_text())["code"] == str(get_decision(reignite).arch)
    # Weights that can no longer be parents were deleted; the best SPNet's were kept.
    artifacts = Path(config.study.artifacts)
    kept = {p.name for p in artifacts.iterdir()}
    best = trials[state.best_parallel.number]
    assert best.user_attrs[WEIGHTS_ATTR] in kept
    assert len(kept) < len([t for t in trials if WEIGHTS_ATTR in t.user_attrs])
    weights = torch.load(artifacts / best.user_attrs[WEIGHTS_ATTR], weights_only=True)
    assert f"{PREFIX}stem.conv1.weight" in weights
    assert any(k.startswith(f"{PREFIX}res") and "_p1." in k for k in weights) == (
        best.user_attrs["parallel"] != "(0,0,0,0)"
    )


# --------------------------------------------------------------------------- storage
def test_redact_hides_passwords() -> None:
    url = "postgresql+psycopg2://u:secret@h/db"
    assert "secret" not in redact(url) and redact(url) == "postgresql+psycopg2://u:***@h/db"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"


def test_unreachable_postgres_raises_storage_error_without_password() -> None:
    url = "postgresql+psycopg2://spnas:secret@127.0.0.1:1/db"
    with pytest.raises(StorageError) as info:
        make_storage(url)
    message = str(info.value)
    assert "secret" not in message and "127.0.0.1:1" in message
    assert "***" in message


def test_unknown_storage_scheme(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="expected sqlite"):
        make_storage("mongodb://u:secret@h/db")


# --------------------------------------------------------------------------- creating studies
def test_create_search_study_is_idempotent(tmp_path: Path, search_assets: Path) -> None:
    config = make_config(tmp_path, "twice", search_assets)
    first = create_search_study(config)
    first.set_user_attr("note", "kept")
    again = create_search_study(config)
    assert again._study_id == first._study_id and again.user_attrs["note"] == "kept"
    assert again.user_attrs[CONFIG_ATTR] == config.to_dict()
    assert again.direction == optuna.study.StudyDirection.MAXIMIZE

    changed = make_config(tmp_path, "twice", search_assets, serial={"n_stuck": 7})
    with pytest.raises(ConfigError, match=r"serial\.n_stuck") as info:
        create_search_study(changed)
    assert "2 → 7" in str(info.value)


def test_unknown_yaml_keys_are_named(tmp_path: Path) -> None:
    values = config_dict(tmp_path, "yaml")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    assert SearchConfig.from_yaml(path).to_dict() == SearchConfig.from_dict(values).to_dict()

    values["serial"]["n_stuk"] = 3
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=r"serial\.n_stuk"):
        SearchConfig.from_yaml(path)

    del values["serial"]["n_stuk"]
    values["paralel"] = {"n_stuck": 3}
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="paralel"):
        SearchConfig.from_yaml(path)


def test_smoke_study_yaml_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)  # its paths are relative to its folder, not to where we run
    config = SearchConfig.from_yaml(root / "studies" / "smoke.yaml")
    assert config.study.name == "smoke" and config.direction == "maximize"
    assert config.study.workdir == str(root / "runs" / "smoke")
    assert config.study.storage == f"sqlite:///{root / 'runs' / 'smoke' / 'spnas.db'}"
    assert Path(config.engine.config).is_file()


@pytest.mark.parametrize(
    ("name", "profile"),
    [("demo", "small-objects"), ("bench-small", "small-objects"), ("bench-large", "large-objects")],
)
def test_benchmark_study_yamls_generate_their_profile(
    name: str, profile: str, tmp_path: Path
) -> None:
    from spnas.search import prepare_data

    root = Path(__file__).resolve().parents[2]
    config = SearchConfig.from_yaml(
        root / "studies" / f"{name}.yaml",
        [f"data.dir={tmp_path / 'data'}", "data.synthetic.train=2", "data.synthetic.val=1"],
    )
    assert config.data.synthetic_settings.profile == profile
    assert config.search.comparison == "equal_training"
    prepare_data(config)
    info = json.loads((tmp_path / "data" / "train.json").read_text())["info"]
    assert profile in info["description"]


def test_unknown_synthetic_profile_is_named(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match=r"'data.synthetic.profile': 'tiny' is not a synthetic"):
        SearchConfig.from_yaml(root / "studies" / "demo.yaml", ["data.synthetic.profile=tiny"])


# --------------------------------------------------------------------------- spnas status
def test_status_json(finished_search: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config, _, state = finished_search
    argv = ["status", "--study", config.study.name, "--storage", config.study.storage]
    assert spnas.cli.main([*argv, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {"phase", "done", "best", "trials"} <= set(status)
    assert status["phase"] == "done" and status["done"] is True
    serial, parallel = status["best"]["serial"], status["best"]["parallel"]
    assert serial["arch"] == str(state.best_serial.arch)
    assert serial["AP"] == pytest.approx(state.best_serial.value)
    assert parallel["arch"] == str(state.best_parallel.arch)
    assert parallel["parallel"] == str(state.best_parallel.parallel)
    assert parallel["AP"] == pytest.approx(state.best_parallel.value)
    rows = status["trials"]
    assert rows and {"number", "kind", "state", "arch", "parallel", "AP"} <= set(rows[0])
    assert rows[0]["kind"] == "seed" and rows[0]["state"] == "COMPLETE"
    assert {r["kind"] for r in rows} >= {"seed", "serial", "reignite", "parallel"}
    assert "idle" not in {r["kind"] for r in rows}
    # Verification: the seed, every round's best and the best SPNet, retrained 3 times each.
    verify = status["verify"]
    assert verify["complete"] is True and verify["repeats"] == 3
    roles = [n["role"] for n in verify["networks"]]
    assert roles[0] == "seed" and roles[-1] == "spnet" and len(roles) >= 2
    for network in verify["networks"]:
        assert {"role", "arch", "parallel", "search_ap", "retrained_ap", "mean", "std"} <= set(
            network
        )
        assert len(network["retrained_ap"]) == 3 and None not in network["retrained_ap"]
        assert network["mean"] == pytest.approx(sum(network["retrained_ap"]) / 3)
    spnet = verify["networks"][-1]
    assert (spnet["arch"], spnet["parallel"]) == (
        str(state.best_parallel.arch),
        str(state.best_parallel.parallel),
    )
    assert spnet["search_ap"] == pytest.approx(state.best_parallel.value)
    assert set(verify["gain_over_seed"]) >= {"mean", "std"} and -1 <= verify["kendall_tau"] <= 1
    verify_rows = [r for r in rows if r["kind"] == "verify"]
    assert len(verify_rows) == 3 * len(roles) and {r["repeat"] for r in verify_rows} == {0, 1, 2}

    assert spnas.cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"study {config.study.name}: phase done" in text and "best parallel" in text
    assert "verification (retrained from scratch, 3 seed(s) each)" in text
    assert "Kendall τ" in text and verify["verdict"] in text


def test_status_of_an_unknown_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    code = spnas.cli.main(["status", "--study", "nope", "--storage", url, "--json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "spnas search" in err
