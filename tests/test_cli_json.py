"""Every ``--json`` output is JSON: non-finite numbers (a diverged training's NaN) are ``null``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from spnas.cli import main
from spnas.cli._json import dumps
from spnas.search import CONFIG_ATTR, Decision, SearchConfig

CLI = Path(__file__).resolve().parents[1] / "spnas" / "cli"


def strict_loads(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_dumps_writes_non_finite_numbers_as_null() -> None:
    value = {"AP": math.nan, "loss": [math.inf, 1.5, -math.inf], "nested": {"x": (math.nan,)}}
    assert strict_loads(dumps(value)) == {
        "AP": None,
        "loss": [None, 1.5, None],
        "nested": {"x": [None]},
    }


def test_status_json_of_a_diverged_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    config = SearchConfig.from_dict({"study": {"name": "nan"}, "model": {"width": 8}})
    study = optuna.create_study(study_name="nan", storage=url, direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    seed = Decision("seed", arch=config.seed_arch)
    study.add_trial(
        optuna.trial.create_trial(
            value=1.0,
            system_attrs=seed.to_attrs(),
            user_attrs={"AP": math.nan, "gmacs": math.inf},
        )
    )
    assert main(["status", "--study", "nan", "--storage", url, "--json"]) == 0
    status = strict_loads(capsys.readouterr().out)
    assert status["trials"][0]["AP"] is None and status["trials"][0]["gmacs"] is None


def test_every_json_option_prints_through_dumps() -> None:
    for path in sorted(CLI.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if '"--json"' in text:
            assert "print(dumps(" in text and "json.dumps" not in text, path.name
