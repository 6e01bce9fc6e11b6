"""A search trial trained data-parallel (``schedule.gpus_per_trial: 2``, Gloo on the CPU):
rank 0 reports to Optuna and uploads the weights; a rank that dies fails the trial, which the
search retries."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import optuna
import pytest
import torch.distributed as dist
from search_doubles import make_config

from spnas.engines.torchvision import TorchvisionEngine

pytestmark = [pytest.mark.slow, pytest.mark.processes]


class RankKillingEngine(TorchvisionEngine):
    """The torchvision engine whose rank 1 exits (code 3) in the first trial, as a process
    lost with its GPU would; a marker file makes later trials train normally."""

    def __init__(self, marker: str, **options: float) -> None:
        super().__init__(**options)
        self.marker = marker

    def train_eval(
        self, spec, init_weights, schedule, data, reporter=None, out_dir="output", **kwargs
    ):
        if dist.is_initialized() and dist.get_rank() == 1 and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(3)
        return super().train_eval(spec, init_weights, schedule, data, reporter, out_dir, **kwargs)


def test_a_data_parallel_trial_whose_rank_dies_is_retried(
    search_assets: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from spnas.search import (
        WEIGHTS_ATTR,
        Objective,
        create_search_study,
        get_decision,
        run_worker,
    )

    config = make_config(tmp_path, "ddp", search_assets, schedule={"iters": 2, "gpus_per_trial": 2})
    create_search_study(config)
    marker = tmp_path / "rank-1-died"
    engine = RankKillingEngine(
        str(marker), show_progress=False, representation_size=64, box_batch_size_per_image=16
    )
    with caplog.at_level(logging.WARNING, logger="optuna"):
        run_worker(
            config.study.name,
            config.study.storage,
            max_trials=2,
            objective=Objective(config, engine=engine),
        )
    trials = optuna.load_study(
        study_name=config.study.name, storage=config.study.storage
    ).get_trials()
    assert marker.exists()
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]
    # The seed barrier's failed attempt is retried with the same decision.
    assert get_decision(trials[0]).kind == get_decision(trials[1]).kind == "seed"
    failure = " ".join(r.getMessage() for r in caplog.records)
    assert "DistributedError" in failure and "exit code 3" in failure
    done = trials[1]
    assert math.isfinite(done.value)
    # Rank 0's final evaluation reached Optuna through the launcher (at the last iteration).
    assert list(done.intermediate_values) == [2]
    assert done.user_attrs["train_iters"] == 2
    assert done.user_attrs[WEIGHTS_ATTR]
