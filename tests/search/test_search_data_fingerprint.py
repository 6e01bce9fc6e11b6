"""Validate once (issue 22): the study validates its data set when it is created and stores
its fingerprint; ``spnas worker`` checks the fingerprint without opening an image, and refuses
a data set whose annotation files changed since, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from search_doubles import make_config

from spnas.cli import main
from spnas.data import _validate
from spnas.search import CONFIG_ATTR, DATA_ATTR, create_search_study
from spnas.search._worker import _storable


@pytest.fixture()
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The image files the validator opens, in order."""
    seen: list[Path] = []
    check = _validate.check_image_decodes

    def counting(path: Path, record: str) -> None:
        seen.append(path)
        check(path, record)

    monkeypatch.setattr(_validate, "check_image_decodes", counting)
    return seen


def _config(tmp_path: Path, assets: Path, name: str):
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    return make_config(tmp_path / "run", name, assets, data={"dir": str(data)})


def _worker(config, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["worker", "--study", config.study.name, "--storage", config.study.storage]
    code = main([*argv, "--max-trials", "0"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_workers_do_not_open_images(
    tmp_path: Path, search_assets: Path, opened: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, search_assets, "once")
    create_search_study(config)
    images = len(list((Path(config.data.dir) / "images").rglob("*.png")))
    assert len(opened) == images == 16  # 12 train + 4 val, each opened once
    stored = optuna.load_study(study_name="once", storage=config.study.storage).user_attrs
    assert sorted(stored[DATA_ATTR]["files"]) == ["train.json", "val.json"]
    assert stored[DATA_ATTR]["classes"] == 2
    for _ in range(2):  # a worker, and the same worker requeued
        code, output = _worker(config, capsys)
        assert code == 0, output
    assert len(opened) == images


def test_a_worker_refuses_a_changed_annotation_file(
    tmp_path: Path, search_assets: Path, opened: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, search_assets, "changed")
    create_search_study(config)
    train = Path(config.data.dir) / "train.json"
    size = train.stat().st_size
    train.write_text(train.read_text().replace('"annotations":[{', '"annotations":[{"x":0,', 1))
    code, output = _worker(config, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert str(train) in output and f"expected {size} bytes" in output
    assert "study 'changed'" in output
    trials = optuna.load_study(study_name="changed", storage=config.study.storage).trials
    assert trials == []
    # Resuming the study with `spnas search` is refused as well.
    with pytest.raises(Exception, match="exists with another data set"):
        create_search_study(config)


def test_a_study_without_a_fingerprint_is_validated_once(
    tmp_path: Path, search_assets: Path, opened: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, search_assets, "older").resolved(tmp_path)
    # A study as versions before fingerprints created it: the configuration only.
    (tmp_path / "run").mkdir()
    study = optuna.create_study(study_name="older", storage=config.study.storage)
    study.set_user_attr(CONFIG_ATTR, _storable(config.to_dict()))
    code, output = _worker(config, capsys)
    assert code == 0, output
    assert len(opened) == 16
    assert (
        DATA_ATTR in optuna.load_study(study_name="older", storage=config.study.storage).user_attrs
    )
    code, output = _worker(config, capsys)
    assert code == 0, output
    assert len(opened) == 16  # the second worker only checks the fingerprint


def test_a_worker_opens_the_storage_once(
    tmp_path: Path,
    search_assets: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One connection pool a worker: on PostgreSQL its connections are the budget that the
    SLURM recipe counts (2 held while it trains, measured; two storages held 4)."""
    config = _config(tmp_path, search_assets, "pools")
    create_search_study(config)
    engines: set[sqlalchemy.engine.Engine] = set()

    def used(connection: sqlalchemy.engine.Connection) -> None:
        engines.add(connection.engine)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "engine_connect", used)
    try:
        code, output = _worker(config, capsys)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "engine_connect", used)
    assert code == 0, output
    assert len(engines) == 1
