"""A detectron2 training interrupted after a checkpoint resumes from it and ends as if never
stopped (``train_eval(..., checkpoint_dir=...)``, :mod:`spnas.engines.detectron2.resume`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spnas.data.synthetic import make_synthetic_dataset
from spnas.engines import DataSpec, ModelSpec, Schedule
from spnas.engines.detectron2 import Detectron2Engine, config_path

#: 8 iterations: a checkpoint every 2 (a quarter of the run), the last before the stop at 4.
ITERS = 8
STOP_AT = 5


class Interrupted(Exception):
    """Stands for the preemption that ends a trial mid-training."""


class Recorder:
    """Records progress (iteration, loss) and the last metrics; raises at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.losses: list[tuple[int, float]] = []
        self.metrics: dict[str, float] = {}

    def progress(self, iteration: int, total: int, loss: float) -> None:
        self.losses.append((iteration, loss))
        if self.stop_at is not None and iteration >= self.stop_at:
            raise Interrupted(iteration)

    def evaluation(self, iteration: int, metrics) -> None:
        self.metrics = dict(metrics)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DataSpec:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, train=24, val=8, size=96, classes=2, seed=0, show_progress=False)
    return DataSpec.from_dir(root)


def _train(data: DataSpec, out: Path, reporter: Recorder, checkpoint_dir: Path | None):
    engine = Detectron2Engine(config_path("faster_rcnn_spnet_fpn_cpu.yaml"), show_progress=False)
    spec = ModelSpec("BB(11,d1,d1,d1)", num_classes=2, base_width=8, fpn_channels=16, anchor_size=8)
    tiny = {"iters": ITERS, "ims_per_batch": 2, "warmup_iters": 2, "min_size": 96, "max_size": 96}
    schedule = Schedule.fast(**tiny, num_workers=0, device="cpu", seed=3)
    return engine.train_eval(
        spec, None, schedule, data, reporter, out_dir=out, checkpoint_dir=checkpoint_dir
    )


def test_a_resumed_training_ends_as_the_uninterrupted_one(data, tmp_path) -> None:
    whole = Recorder()
    expected = _train(data, tmp_path / "whole", whole, None)
    assert not (tmp_path / "whole" / "detectron2" / "last_checkpoint").exists()

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        _train(data, tmp_path / "first", Recorder(stop_at=STOP_AT), checkpoints)
    # Only the latest periodic checkpoint is kept: after iteration 4 (0-based 3).
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last_checkpoint",
        "model_0000003.pth",
    ]

    resumed = Recorder()
    result = _train(data, tmp_path / "retry", resumed, checkpoints)
    assert resumed.losses[0][0] == 5, "resumes after the checkpointed iteration 4"
    # The same batches, flips, sampled proposals, optimizer and LR: the same losses, exactly.
    assert resumed.losses == whole.losses[4:]
    assert result.metrics == pytest.approx(expected.metrics, nan_ok=True, abs=0)
    assert result.iterations == ITERS


@pytest.mark.parametrize("damage", ["gone", "not a checkpoint"])
def test_a_checkpoint_that_cannot_be_resumed_from_trains_from_the_beginning(
    data, tmp_path, damage: str
) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last_checkpoint").write_text("model_0000003.pth")
    if damage == "not a checkpoint":
        (checkpoints / "model_0000003.pth").write_bytes(b"truncated by a dying node")
    reporter = Recorder()
    result = _train(data, tmp_path / "trial", reporter, checkpoints)
    assert [i for i, _ in reporter.losses] == list(range(1, ITERS + 1))
    assert result.iterations == ITERS
    assert (checkpoints / "model_0000007.pth").is_file(), "its own checkpoints replace it"
