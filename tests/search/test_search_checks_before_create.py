"""Everything checkable is checked before anything is created (issue 20): each case of the
table runs ``spnas search STUDY.yaml --workers 1`` and must exit with status 2, name the input
(the key or the file), and leave nothing on disk — no storage, no artifact store, no workdir.

Accepted input would start workers: the ``no_workers`` fixture makes that an error at once, so
a case the checks miss fails fast instead of running a search.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from search_doubles import config_dict

from spnas.cli import main


@dataclass(frozen=True)
class Case:
    """One bad input: the study YAML's sections (or a function of the test's folders and
    ``monkeypatch`` returning them), and what the error must say."""

    id: str
    sections: dict[str, Any] | Callable[[Path, Path, pytest.MonkeyPatch], dict[str, Any]]
    expected: tuple[str, ...]
    #: Text replacing ``- BOMB`` in the YAML (what ``yaml.safe_dump`` cannot write: aliases).
    raw: str | None = None


def _copy_data(tmp_path: Path, assets: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    return data


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))


def _differing_categories(tmp_path: Path, assets: Path, _: pytest.MonkeyPatch) -> dict[str, Any]:
    data = _copy_data(tmp_path, assets)
    _edit(data / "val.json", lambda v: v["categories"].append({"id": 99, "name": "extra"}))
    return {"data": {"dir": str(data)}}


#: Classes whose detector heads need more than twice the test device's memory; the backbone
#: (width 8, 64 px) alone needs a few MiB. Scaled down from the reviewer's 3,000,000 classes,
#: whose heads need ~0.4 TiB by the same estimate, so the case reads small JSON files.
MANY_CLASSES = 40_000
TEST_DEVICE_BYTES = 2**30


def _many_classes(tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from spnas.search import _checks

    data = _copy_data(tmp_path, assets)

    def more(values: dict[str, Any]) -> None:
        first = max(c["id"] for c in values["categories"]) + 1
        values["categories"] += [
            {"id": i, "name": f"class-{i}"}
            for i in range(first, first + MANY_CLASSES - len(values["categories"]))
        ]

    for name in ("train.json", "val.json"):
        _edit(data / name, more)
    monkeypatch.setattr(
        _checks, "device_bytes", lambda device: (TEST_DEVICE_BYTES, "the 1 GiB test device")
    )
    return {"data": {"dir": str(data)}}


def _synthetic_in_workdir(tmp_path: Path, _: Path, __: pytest.MonkeyPatch) -> dict[str, Any]:
    """The shipped studies' layout: a synthetic data set generated inside the workdir."""
    synthetic = {"train": 2, "val": 1, "size": 32, "classes": 2}
    return {
        "study": {"storage": "ftp://x"},
        "data": {"dir": str(tmp_path / "run" / "data"), "synthetic": synthetic},
    }


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A list of ``levels`` lists, the k-th holding ``width`` aliases of the one before:
    ``width ** levels`` values (387 M) written in under 1 KB."""
    lists = [f"&a0 [{', '.join(['1'] * width)}]"]
    lists += [f"&a{k} [{', '.join([f'*a{k - 1}'] * width)}]" for k in range(1, levels)]
    return f"- [{', '.join(lists)}]"


def _detectron2(*opts: Any) -> dict[str, Any]:
    return {"engine": {"name": "detectron2", "opts": list(opts), "show_progress": False}}


CASES = (
    Case(
        "alias-bomb-in-engine-opts",
        _detectron2("MODEL.ANCHOR_GENERATOR.SIZES", "BOMB"),
        ("'engine.opts'", "more than 10000 values"),
        raw=_alias_bomb(),
    ),
    Case(
        "unknown-detectron2-key",
        _detectron2("MODEL.NOT_A_KEY", 1),
        ("'engine.opts'", "'MODEL.NOT_A_KEY' is not a detectron2 config key"),
    ),
    Case(
        "detectron2-value-of-another-type",
        _detectron2("MODEL.FPN.OUT_CHANNELS", "wide"),
        ("'engine.opts'", "'MODEL.FPN.OUT_CHANNELS' is 'wide'", "type int"),
    ),
    Case(
        "train-val-categories-differ",
        _differing_categories,
        ("train.json", "val.json", "different categories", "99 'extra'"),
    ),
    Case(
        "heads-of-many-classes-too-big",
        _many_classes,
        ("'data.dir'", f"{MANY_CLASSES} categories", "heads", "test device"),
    ),
    Case(
        "device-not-here",
        {"schedule": {"device": "cuda:7"}},
        ("'schedule.device' is 'cuda:7'",),
    ),
    Case(
        "verify-device-not-here",
        {"verify": {"schedule": {"device": "cuda:7"}}},
        ("'verify.schedule.device' is 'cuda:7'",),
    ),
    Case(
        "storage-url-scheme",
        {"study": {"storage": "ftp://x"}},
        ("'study.storage'", "'ftp://x'", "sqlite:///FILE"),
    ),
    Case(
        "storage-url-before-synthetic-data",
        _synthetic_in_workdir,
        ("'study.storage'", "'ftp://x'"),
    ),
    Case(
        "n-rounds-too-many",
        {"serial": {"n_rounds": 1_000_000}},
        ("'serial.n_rounds' is 1000000", "from 0 to 100"),
    ),
    Case(
        "lamr-category-not-in-data",
        {"data": {"metric": "LAMR", "lamr_category": -1}},
        ("'data.lamr_category' is -1", "category id", "1, 2"),
    ),
)


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the bad input was accepted: spnas search started workers")

    monkeypatch.setattr("spnas.search.launch_workers", refuse)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
@pytest.mark.usefixtures("no_workers")
def test_bad_input_is_refused_before_anything_is_created(
    case: Case,
    tmp_path: Path,
    search_assets: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = case.sections
    if callable(sections):
        sections = sections(tmp_path, search_assets, monkeypatch)
    text = yaml.safe_dump(config_dict(tmp_path / "run", "bad", search_assets, **sections))
    if case.raw is not None:
        assert text.count("- BOMB") == 1
        text = text.replace("- BOMB", case.raw)
    study = tmp_path / "study.yaml"
    study.write_text(text)
    started = time.monotonic()
    code = main(["search", str(study), "--workers", "1"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert code == 2, output
    assert "Traceback" not in output, output
    for expected in case.expected:
        assert expected in output, output
    assert elapsed < 30, f"refused after {elapsed:.0f} s"
    run = tmp_path / "run"
    left = sorted(str(p.relative_to(tmp_path)) for p in run.rglob("*")) if run.exists() else []
    assert not run.exists(), f"left on disk: {left or [str(run)]}"


def test_an_alias_bomb_is_refused_at_config_load(tmp_path: Path, search_assets: Path) -> None:
    """The bomb is counted as expanded, and counting stops at the limit: fast, small."""
    from spnas.exceptions import ConfigError
    from spnas.search import SearchConfig

    values = config_dict(tmp_path / "run", "bad", search_assets, **_detectron2("K", "BOMB"))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(values).replace("- BOMB", _alias_bomb()))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"'engine\.opts' holds more than 10000 values"):
        SearchConfig.from_yaml(study)
    assert time.monotonic() - started < 1.0


def test_a_bomb_anywhere_names_its_key(tmp_path: Path, search_assets: Path) -> None:
    from spnas.exceptions import ConfigError
    from spnas.search import SearchConfig

    values = config_dict(tmp_path / "run", "bad", search_assets)
    values["verify"] = {"schedule": "BOMB"}
    text = yaml.safe_dump(values).replace("schedule: BOMB", "schedule:\n    " + _alias_bomb())
    study = tmp_path / "study.yaml"
    study.write_text(text)
    with pytest.raises(ConfigError, match=r"'verify\.schedule' holds more than"):
        SearchConfig.from_yaml(study)


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (["MODEL.FPN.NORM"], "'engine.opts': 1 items, expected KEY, VALUE pairs"),
        ([3, 1], "'engine.opts': item 0 is 3, expected a dotted config key"),
        (["MODEL.FPN.NORM", {"a": 1}], "'engine.opts': the value of 'MODEL.FPN.NORM'"),
    ],
)
def test_engine_opts_shape_is_checked_at_config_load(
    tmp_path: Path, search_assets: Path, opts: list[Any], expected: str
) -> None:
    from spnas.exceptions import ConfigError
    from spnas.search import SearchConfig

    values = config_dict(tmp_path / "run", "bad", search_assets, **_detectron2(*opts))
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_dict(values)
    assert expected in str(info.value)


def test_good_detectron2_opts_pass_the_engine_check(tmp_path: Path, search_assets: Path) -> None:
    from search_doubles import make_config

    from spnas.search import check_settings

    sections = _detectron2(
        "MODEL.ANCHOR_GENERATOR.SIZES", [[8, 16]], "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"
    )
    check_settings(make_config(tmp_path / "run", "good", search_assets, **sections))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_workers")
def test_workers_0_creates_and_checks_the_study_and_trains_nothing(
    tmp_path: Path, search_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cluster recipes' creation step: the study is created (its inputs checked) and the
    command exits 0 without starting a worker (``no_workers``)."""
    import optuna

    from spnas.search import CONFIG_ATTR

    values = config_dict(tmp_path / "run", "create-only", search_assets)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(values))
    assert main(["search", str(study), "--workers", "0"]) == 0
    assert "spnas worker --study create-only" in capsys.readouterr().out
    created = optuna.load_study(study_name="create-only", storage=values["study"]["storage"])
    assert created.user_attrs[CONFIG_ATTR]["study"]["name"] == "create-only"
    assert created.get_trials() == []

    bad = config_dict(tmp_path / "bad", "bad", search_assets, data={"dir": str(tmp_path / "no")})
    study.write_text(yaml.safe_dump(bad))
    assert main(["search", str(study), "--workers", "0"]) == 2
    assert main(["search", str(study), "--workers", "-1"]) == 2
    assert "--workers -1: expected 0 (create only) or more" in capsys.readouterr().err
