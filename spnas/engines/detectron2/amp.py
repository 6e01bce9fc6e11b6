"""Mixed-precision training steps through ``torch.amp``.

detectron2's :class:`~detectron2.engine.AMPTrainer` builds its grad scaler and autocast
context from ``torch.cuda.amp``, deprecated since torch 2.4 (a ``FutureWarning`` at every
step, and slated for removal). :class:`TorchAMPTrainer` keeps its contract (same checkpoint
key ``grad_scaler``, same metrics) and takes both from ``torch.amp`` for a named device type.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from detectron2.engine import AMPTrainer


class TorchAMPTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` on ``torch.amp``: the forward pass under
    ``torch.autocast(device_type)``, the backward pass on a loss scaled by
    ``torch.amp.GradScaler(device_type)``, the optimizer stepped through the scaler (which
    skips a step whose gradients overflowed).

    Args:
        model, data_loader, optimizer: as :class:`~detectron2.engine.SimpleTrainer`'s.
        device_type: ``"cuda"`` (what ``SOLVER.AMP.ENABLED`` trains on); ``"cpu"`` autocasts
            to bfloat16.
    """

    def __init__(self, model: Any, data_loader: Any, optimizer: Any, device_type: str = "cuda"):
        super().__init__(
            model, data_loader, optimizer, grad_scaler=torch.amp.GradScaler(device_type)
        )
        self.device_type = device_type

    def run_step(self) -> None:
        assert self.model.training, "[TorchAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):  # a model returning one loss
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
