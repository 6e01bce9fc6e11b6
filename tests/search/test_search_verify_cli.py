"""``spnas verify`` on demand: a greedy search without verification, verified afterwards by
worker processes (the real torchvision engine, tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from search_doubles import FakeEngine, make_config

from spnas.cli import main
from spnas.search import Objective, create_search_study, load_search_study, run_worker


@pytest.mark.slow
def test_verify_on_demand_retrains_the_search_networks(
    search_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(
        tmp_path,
        "greedy",
        search_assets,
        search={"comparison": "greedy"},
        verify={"enabled": False},
        serial={"n_rounds": 0},
    )
    create_search_study(config)
    engine = FakeEngine(sleep=0.0)
    state = run_worker("greedy", config.study.storage, objective=Objective(config, engine=engine))
    assert state.phase == "done"
    storage = config.study.storage
    argv = ["verify", "--study", "greedy", "--storage", storage, "--repeats", "2", "--json"]
    assert main([*argv, "--threads", "1"]) == 0
    verify = json.loads(capsys.readouterr().out)
    assert verify["networks"][0]["role"] == "seed"
    assert verify["networks"][-1]["role"] == "spnet" and verify["repeats"] == 2
    for network in verify["networks"]:
        assert len(network["retrained_ap"]) == 2 and None not in network["retrained_ap"]
    assert verify["complete"] and verify["gain_over_seed"]["n"] == 2
    # The study now says it verifies, so new workers would take part; nothing else changed.
    _, stored = load_search_study("greedy", storage)
    assert stored.verify.enabled and stored.verify.repeats == 2
    assert stored.search.comparison == "greedy"


def test_verify_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["verify", "--study", "nope", "--storage", url]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["verify", "--study", "nope", "--storage", url, "--repeats", "0"]) == 2
    assert "--repeats 0: expected at least 1" in capsys.readouterr().err
