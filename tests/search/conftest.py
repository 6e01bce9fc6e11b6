"""Fixtures of the search tests; makes ``search_doubles`` importable (no package here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_doubles import FakeEngine, make_config, write_seed_weights


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every search test module runs with one torch thread (``tests/conftest.py``)."""


@pytest.fixture(scope="session")
def search_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set (``data/``) and seed weights (``seed_resnet18.pth``).

    Configs point at these files (``search_doubles.config_dict``'s ``assets`` argument).
    """
    from spnas.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("search-assets")
    make_synthetic_dataset(
        root / "data", train=12, val=4, size=64, classes=2, seed=0, show_progress=False
    )
    write_seed_weights(root / "seed_resnet18.pth")
    return root


@pytest.fixture(scope="session")
def finished_search(search_assets: Path, tmp_path_factory: pytest.TempPathFactory):
    """A whole search run in this process: ``Objective`` over ``FakeEngine``, the real
    reignition (crop pretraining), SQLite. Returns ``(config, engine, state)``."""
    from spnas.search import Objective, create_search_study, run_worker

    root = tmp_path_factory.mktemp("finished-search")
    config = make_config(root, "finished", search_assets)
    create_search_study(config)
    engine = FakeEngine(sleep=0.05)
    state = run_worker(
        config.study.name, config.study.storage, objective=Objective(config, engine=engine)
    )
    return config, engine, state
