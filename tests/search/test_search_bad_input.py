"""Bad input, as a user meets it through ``spnas search``: each case exits with status 2 and a
message naming the input, the key or position, and what was expected, without a traceback, before
any trial runs; and an existing study keeps every trial."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from search_doubles import config_dict

from spnas.cli import main


def run_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, name: str = "bad.yaml"
) -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(text)
    code = main(["search", str(path), "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def study_yaml(tmp_path: Path, assets: Path, **sections: dict[str, Any]) -> str:
    return yaml.safe_dump(config_dict(tmp_path / "run", "bad", assets, **sections))


def assert_refused(code: int, output: str, *expected: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"serial": {"n_stuk": 2}}, ["unknown key 'serial.n_stuk'", "n_stuck"]),
        ({"serial": {"n_stuck": "three"}}, ["'serial.n_stuck' is 'three'", "an integer"]),
        (
            {"model": {"seed_arch": "BB(11,d1x,d1,d1)"}},
            ["'model.seed_arch'", "BB(11,d1x,d1,d1)", "column 9"],
        ),
        ({"model": {"norm": "XN"}}, ["'model.norm' is 'XN'", "BN"]),
        ({"model": {"width": 0}}, ["'model.width' is 0", "positive"]),
        ({"model": {"stem": "tall"}}, ["'model.stem' is 'tall'", "resnet"]),
        ({"schedule": {"base_lr": -0.02}}, ["'schedule.base_lr' is -0.02", "positive"]),
        ({"schedule": {"ims_per_batch": 0}}, ["ims_per_batch=0", "≥ 1"]),
        ({"reignite": {"batch_size": 0}}, ["'reignite.batch_size' is 0", "positive"]),
        ({"reignite": {"lr": 0}}, ["'reignite.lr' is 0", "positive"]),
        ({"search": {"wait_seconds": -1}}, ["'search.wait_seconds' is -1.0", "positive"]),
        ({"study": {"name": "a/b"}}, ["'study.name' is 'a/b'", "letters, digits"]),
        (
            {"model": {"seed_arch": "XB(11,d1,d1,d1)", "width": 8, "pretrained": None}},
            ["'model.xb_groups' is 32", "16 inner channels"],
        ),
        (
            {"model": {"width": 65536, "pretrained": None}},
            ["'model.seed_arch' BB(11,d1,d1,d1) at 'model.width' 65536", "GiB to train"],
        ),
        ({"engine": {"name": "detectron2", "config": "nowhere.yaml"}}, ["'engine.config'"]),
    ],
)
def test_bad_study_values_are_named(
    tmp_path: Path,
    search_assets: Path,
    capsys: pytest.CaptureFixture[str],
    sections: dict[str, Any],
    expected: list[str],
) -> None:
    started = time.monotonic()
    code, output = run_search(tmp_path, capsys, study_yaml(tmp_path, search_assets, **sections))
    assert_refused(code, output, *expected)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists(), "nothing is created for bad input"


def test_malformed_yaml_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run_search(tmp_path, capsys, "study: {name: x\nserial: [1, 2\n", "broken.yaml")
    assert_refused(code, output, "broken.yaml", "malformed YAML at line 2")


def test_missing_data_set_fails_before_any_trial(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = study_yaml(tmp_path, search_assets, data={"dir": str(tmp_path / "nowhere")})
    code, output = run_search(tmp_path, capsys, text)
    assert_refused(code, output, "data set directory", "nowhere", "does not exist")
    assert not (tmp_path / "run" / "study.db").exists()


@pytest.mark.parametrize("kind", ["truncated", "foreign", "missing"])
def test_bad_pretrained_weights_name_the_file(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    weights = tmp_path / f"{kind}.pth"
    good = (search_assets / "seed_resnet18.pth").read_bytes()
    if kind == "truncated":
        weights.write_bytes(good[: len(good) // 2])
    elif kind == "foreign":
        torch.save({"encoder.conv.weight": torch.zeros(8, 3, 3, 3)}, weights)
    text = study_yaml(tmp_path, search_assets, model={"pretrained": str(weights)})
    code, output = run_search(tmp_path, capsys, text)
    expected = {
        "truncated": "could not be read",
        "foreign": "unexpected key 'encoder.conv.weight'",
        "missing": "does not exist",
    }[kind]
    assert_refused(code, output, f"weights file '{weights}'", expected)


def test_unusable_artifact_store_is_named(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    text = study_yaml(tmp_path, search_assets, study={"artifacts": str(blocker / "artifacts")})
    code, output = run_search(tmp_path, capsys, text)
    assert_refused(code, output, "artifact", str(blocker / "artifacts"))


def test_unreachable_database_hides_the_password(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(study_yaml(tmp_path, search_assets))
    url = "postgresql+psycopg2://spnas:hunter2@127.0.0.1:1/spnas"
    code = main(["search", str(path), "--workers", "1", "--storage", url])
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert_refused(code, output, "postgresql+psycopg2://spnas:***@127.0.0.1:1/spnas")
    assert "hunter2" not in output


def test_bad_yaml_for_an_existing_study_loses_nothing(
    finished_search: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = finished_search
    storage = config.study.storage
    before = optuna.load_study(study_name=config.study.name, storage=storage).get_trials()
    values = config.to_dict()
    values["serial"]["n_stuck"] = "many"
    code, output = run_search(tmp_path, capsys, yaml.safe_dump(values))
    assert_refused(code, output, "'serial.n_stuck' is 'many'")
    values["serial"]["n_stuck"] = config.serial.n_stuck + 1  # valid, but not this study's
    code, output = run_search(tmp_path, capsys, yaml.safe_dump(values))
    assert_refused(code, output, "exists with another configuration", "serial.n_stuck")
    after = optuna.load_study(study_name=config.study.name, storage=storage).get_trials()
    assert [(t.number, t.state, t.value) for t in after] == [
        (t.number, t.state, t.value) for t in before
    ]


# --------------------------------------------------------------------------- checked up front
def _bad_data(tmp_path: Path, assets: Path, mutate: str) -> Path:
    """A copy of the test data set with one bad record or image."""
    import json
    import math
    import shutil

    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    train = json.loads((data / "train.json").read_text())
    first = train["annotations"][0]
    image = data / "images" / train["images"][0]["file_name"]
    if mutate == "nan":
        first["bbox"][2] = math.nan
    elif mutate == "infinite":
        first["bbox"][0] = math.inf
    elif mutate == "degenerate":
        first["bbox"][3] = 0
    elif mutate == "outside":
        first["bbox"] = [60, 60, 30, 30]
    elif mutate == "missing":
        image.unlink()
    elif mutate == "undecodable":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    (data / "train.json").write_text(json.dumps(train))
    return data


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        ("nan", ["annotations[0] (id 1)", "is not finite"]),
        ("infinite", ["annotations[0] (id 1)", "is not finite"]),
        ("degenerate", ["annotations[0] (id 1)", "non-positive width or height"]),
        ("outside", ["annotations[0] (id 1)", "lies outside its 64x64 image"]),
        ("missing", ["images[0] (id 1)", "not found"]),
        ("undecodable", ["image id 1", "does not decode"]),
    ],
)
def test_bad_records_are_refused_before_the_study_exists(
    tmp_path: Path,
    search_assets: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: str,
    expected: list[str],
) -> None:
    data = _bad_data(tmp_path, search_assets, mutate)
    text = study_yaml(tmp_path, search_assets, data={"dir": str(data)})
    started = time.monotonic()
    code, output = run_search(tmp_path, capsys, text)
    assert_refused(code, output, "train.json", *expected)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists(), "nothing is created for bad input"


def test_relative_paths_are_relative_to_the_yaml(
    tmp_path: Path, search_assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spnas.search import SearchConfig

    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "d2.yaml").write_text("MODEL: {}\n")
    values = config_dict(tmp_path / "run", "relative", search_assets)
    values["engine"] = {"name": "detectron2", "config": "d2.yaml"}
    values["data"]["dir"] = "../data"
    (folder / "study.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.chdir(search_assets)  # anywhere but the YAML's folder
    config = SearchConfig.from_yaml(folder / "study.yaml")
    assert config.engine.config == str(folder / "d2.yaml")
    assert config.data.dir == str(tmp_path / "data")
