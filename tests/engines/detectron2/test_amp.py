"""Mixed precision through ``torch.amp`` (spnas.engines.detectron2.amp): the forward pass
autocasts, the scaled backward pass trains, the scaler is checkpointed, and no deprecated
``torch.cuda.amp`` call is made. Run on the CPU (bfloat16 autocast), the device this machine
has; on CUDA the same code takes ``device_type="cuda"``."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")

from detectron2.utils.events import EventStorage

from spnas.engines.detectron2.amp import TorchAMPTrainer

#: The deprecation torch.cuda.amp's GradScaler and autocast raise.
DEPRECATED = r".*torch\.cuda\.amp"


class _Regression(nn.Module):
    """A linear model returning its loss as detectron2 models do, noting autocast's state."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        out = self.linear(x)
        self.autocast.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return {"loss_mse": ((out.float() - y) ** 2).mean()}


def test_steps_autocast_and_train_without_deprecated_calls() -> None:
    torch.manual_seed(0)
    model = _Regression()
    x = torch.randn(16, 4)
    batch = (x, x.sum(dim=1, keepdim=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", DEPRECATED, FutureWarning)
        trainer = TorchAMPTrainer(model, itertools.repeat(batch), optimizer, "cpu")
        with torch.no_grad():
            first = model(batch)["loss_mse"].item()
        model.autocast.clear()
        with EventStorage(0) as storage:
            for _ in range(20):
                trainer.run_step()
                storage.step()
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
    assert model.autocast == [(True, torch.bfloat16)] * 20
    with torch.no_grad():
        last = model(batch)["loss_mse"].item()
    assert last < 0.5 * first, (first, last)
    assert "grad_scaler" in trainer.state_dict()


def test_an_amp_schedule_trains_with_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``schedule.amp`` reaches :class:`TorchAMPTrainer` with the schedule's device (AMP is
    let through on the CPU here: this machine has no CUDA)."""
    from spnas.data.synthetic import make_synthetic_dataset
    from spnas.engines import DataSpec, ModelSpec, Schedule
    from spnas.engines.detectron2 import Detectron2Engine, config_path
    from spnas.engines.detectron2 import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_amp", lambda amp, device: amp)
    steps: list[str] = []
    run_step = TorchAMPTrainer.run_step

    def counted(self: TorchAMPTrainer) -> None:
        steps.append(self.device_type)
        run_step(self)

    monkeypatch.setattr(TorchAMPTrainer, "run_step", counted)
    make_synthetic_dataset(tmp_path / "data", train=4, val=2, size=64, show_progress=False)
    engine = Detectron2Engine(config_path("faster_rcnn_spnet_fpn_cpu.yaml"), show_progress=False)
    spec = ModelSpec("BB(11,d1,d1,d1)", num_classes=3, base_width=8, fpn_channels=8, anchor_size=8)
    schedule = Schedule.fast(
        iters=2, ims_per_batch=2, min_size=64, max_size=64, num_workers=0, device="cpu", amp=True
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", DEPRECATED, FutureWarning)
        result = engine.train_eval(
            spec, None, schedule, DataSpec.from_dir(tmp_path / "data"), out_dir=tmp_path / "out"
        )
    assert steps == ["cpu", "cpu"]
    assert result.weights.is_file()
