"""Both engines' training loops turn a non-finite loss into :class:`TrialDiverged`, carrying
the iteration, the loss and the seed the search records (docs/design.md §4.2)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from spnas.data import make_synthetic_dataset
from spnas.engines import DataSpec, NullReporter, Schedule, TrialDiverged


class NaNAfter(nn.Module):
    """A "detector" whose loss is finite for ``steps`` steps, then NaN."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.steps = steps
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = self.weight * 0.5
        return {"loss_classifier": loss * math.nan if self.calls > self.steps else loss}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DataSpec:
    root = tmp_path_factory.mktemp("tiny")
    make_synthetic_dataset(root, train=8, val=2, size=32, classes=2, seed=0, show_progress=False)
    return DataSpec.from_dir(root)


def test_training_loop_turns_a_nan_loss_into_trial_diverged(tiny: DataSpec) -> None:
    from spnas.engines.torchvision.training import train

    schedule = Schedule.fast(
        iters=8, ims_per_batch=2, min_size=32, max_size=32, num_workers=0, seed=5
    )
    model = NaNAfter(steps=3)
    with pytest.raises(TrialDiverged, match=r"diverged at iteration 3 of 8") as info:
        train(
            model,
            tiny.splits.load("train"),
            schedule,
            torch.device("cpu"),
            reporter=NullReporter(),
            evaluate=lambda m: {},
            name="NaNAfter",
            show_progress=False,
        )
    assert info.value.iteration == 3 and model.calls == 4
    assert math.isnan(info.value.loss) and info.value.seed == 5


def test_trial_diverged_keeps_its_attributes_through_pickling() -> None:
    # A data-parallel process raises it to its parent through a pipe.
    exc = TrialDiverged("diverged at iteration 7", iteration=7, loss=math.inf, seed=2)
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, TrialDiverged) and str(copy) == "diverged at iteration 7"
    assert (copy.iteration, copy.loss, copy.seed) == (7, math.inf, 2)
    assert TrialDiverged("old style").iteration is None


def test_detectron2_divergence_messages_are_recognised() -> None:
    pytest.importorskip("detectron2")
    from spnas.engines.detectron2.engine import _diverged_loss, _is_divergence

    loss_nan = (
        "Loss became infinite or NaN at iteration=33!\n"
        "loss_dict = {'loss_cls': np.float64(nan), 'loss_box_reg': np.float64(0.25)}"
    )
    assert _is_divergence(FloatingPointError(loss_nan))
    assert math.isnan(_diverged_loss(loss_nan, 1.0))
    assert _diverged_loss("loss_dict = {'loss_cls': 0.5, 'loss_rpn_loc': inf}", 1.0) == math.inf
    rpn = "Predicted boxes or scores contain Inf/NaN. Training has diverged."
    assert _is_divergence(FloatingPointError(rpn)) and _diverged_loss(rpn, 1.25) == 1.25
    assert _is_divergence(AssertionError("Box tensor contains infinite or NaN!"))
    assert not _is_divergence(AssertionError("shape mismatch"))


def test_detectron2_engine_maps_a_diverged_step_to_trial_diverged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's FloatingPointError at iteration ``i`` becomes TrialDiverged(i, loss)."""
    pytest.importorskip("detectron2")
    from spnas.engines import ModelSpec
    from spnas.engines.detectron2 import Detectron2Engine, config_path
    from spnas.engines.detectron2.trainer import SPNASTrainer

    def diverge(self: SPNASTrainer) -> None:
        self.iter = 12
        raise FloatingPointError(
            "Loss became infinite or NaN at iteration=12!\n"
            "loss_dict = {'loss_cls': np.float64(inf), 'loss_box_reg': np.float64(0.5)}"
        )

    monkeypatch.setattr(SPNASTrainer, "train", diverge)
    make_synthetic_dataset(
        tmp_path / "data", train=4, val=2, size=64, classes=2, seed=0, show_progress=False
    )
    engine = Detectron2Engine(config_path("faster_rcnn_spnet_fpn_cpu.yaml"), show_progress=False)
    spec = ModelSpec("BB(1,1,1,1)", num_classes=2, base_width=8, fpn_channels=16, anchor_size=8)
    schedule = Schedule.fast(
        iters=20, ims_per_batch=2, min_size=64, max_size=64, num_workers=0, device="cpu", seed=3
    )
    with pytest.raises(TrialDiverged, match=r"diverged at iteration 12 \(seed 3") as info:
        engine.train_eval(
            spec, None, schedule, DataSpec.from_dir(tmp_path / "data"), out_dir=tmp_path / "out"
        )
    assert (info.value.iteration, info.value.loss, info.value.seed) == (12, math.inf, 3)
