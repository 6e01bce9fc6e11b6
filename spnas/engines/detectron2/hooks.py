"""Training-loop hooks: a progress bar, and forwarding progress to an spnas reporter."""

from __future__ import annotations

from detectron2.engine import HookBase
from tqdm import tqdm

from spnas.engines._types import Reporter


def latest_loss(trainer) -> float:
    """The total loss of the last iteration (NaN before the first)."""
    try:
        return float(trainer.storage.history("total_loss").latest())
    except KeyError:
        return float("nan")


class ProgressBarHook(HookBase):
    """A tqdm bar over iterations with the running loss."""

    def __init__(self, description: str = "train", enabled: bool = True) -> None:
        self._description = description
        self._enabled = enabled
        self._bar: tqdm | None = None

    def before_train(self) -> None:
        self._bar = tqdm(
            total=self.trainer.max_iter,
            initial=self.trainer.start_iter,
            desc=self._description,
            unit="it",
            disable=not self._enabled,
            dynamic_ncols=True,
        )

    def after_step(self) -> None:
        if self._bar is not None:
            self._bar.update()
            self._bar.set_postfix(loss=f"{latest_loss(self.trainer):.3f}")

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ReporterHook(HookBase):
    """Calls ``reporter.progress(iteration, max_iter, loss)`` after every step."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter

    def after_step(self) -> None:
        self._reporter.progress(
            self.trainer.iter + 1, self.trainer.max_iter, latest_loss(self.trainer)
        )
