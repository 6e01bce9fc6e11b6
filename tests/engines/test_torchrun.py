"""``spnas train`` under ``torchrun``: two Gloo processes on the CPU join one process group
(``env://``) instead of training twice, and global rank 0 alone reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_detectron2_untrusted_files import tiny_yaml

from spnas.data.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow


def test_spnas_train_under_torchrun_is_one_run_of_two_ranks(tmp_path: Path) -> None:
    data = make_synthetic_dataset(
        tmp_path / "data", train=4, val=2, size=64, classes=2, seed=0, show_progress=False
    ).root
    out = tmp_path / "out"
    config = tiny_yaml(tmp_path / "config.yaml", out, iters=2)
    # fmt: off
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "spnas", "train", str(config), "--data", str(data), "--device", "cpu",
        "--iters", "2", "--json",
    ]
    # fmt: on
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # One group of two ranks, not two runs of one each.
    for rank in (0, 1):
        joined = f"joined torchrun's gloo process group of 2 as rank {rank} (local rank {rank}"
        assert joined in run.stderr, run.stderr[-3000:]
    assert "on 2 devices" in run.stderr  # detectron2's distributed evaluation
    # Global rank 0 alone prints the result (a second print would make it two JSON objects).
    assert run.stdout.count('"metrics"') == 1, run.stdout
    result = json.loads(run.stdout)
    assert set(result["metrics"]) >= {"AP", "AP50"}
    assert result["weights"] == str(out / "model_trained.pth")
    state = torch.load(result["weights"], map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1
