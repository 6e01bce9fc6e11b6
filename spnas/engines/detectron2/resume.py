"""What a resumed detectron2 run needs beyond its checkpoint to go on as if never stopped.

detectron2's ``resume_or_load(resume=True)`` restores the weights, the optimizer, the LR
scheduler and the iteration, but the data stream starts again from its first sample and the
random generators from wherever the new process left them: a resumed run trains on other
batches, with other flips and other sampled proposals, than an uninterrupted one.
:class:`~spnas.engines.detectron2.trainer.SPNASTrainer` therefore also saves the random state
(:func:`random_state`) and its sampler's seed in every checkpoint, and on resume starts the
sampler where the interrupted run had come to (:class:`ResumableSampler`) and restores the
random state (:class:`ResumedBatches`). With ``DATALOADER.NUM_WORKERS: 0`` and images of one
aspect-ratio group, a resumed run on the CPU in one process computes exactly what the
uninterrupted one does; with loader worker processes (seeded anew by the loader), several
aspect-ratio groups (whose half-filled batches are not saved) or several processes (the main
process saves its random state, every process restores it) it is the same training with other
random draws.

Everything saved is tensors, numbers and tuples, read back by
:func:`spnas._io.load_tensor_file` (no code runs).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableSampler", "ResumedBatches", "random_state", "set_random_state"]


class ResumableSampler(TrainingSampler):
    """detectron2's :class:`TrainingSampler` (the same infinite, seeded stream of indices for
    this process) without its first ``skip`` indices: those the interrupted run consumed."""

    def __init__(self, size: int, seed: int | None = None, skip: int = 0) -> None:
        super().__init__(size, shuffle=True, seed=seed)
        self.skip = skip

    @property
    def seed(self) -> int:
        """The seed of the stream (drawn by detectron2 when none was given)."""
        return self._seed

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(super().__iter__(), self.skip, None)


def random_state() -> dict[str, Any]:
    """The state of the generators training draws from: torch's (CPU, and CUDA when in use),
    NumPy's global one (detectron2's augmentations) and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: Mapping[str, Any], *, torch_too: bool = True) -> None:
    """Restore what :func:`random_state` returned (torch's generators only with
    ``torch_too``)."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if torch_too:
        _set_torch_state(state)


def _set_torch_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumedBatches:
    """A resumed run's batch iterator, restoring the interrupted run's random state.

    NumPy's and Python's generators (the augmentations) are restored at once; torch's after
    the first batch: fetching it makes the loader's iterator, which draws its workers' base
    seed from torch's generator, a draw the interrupted run made before its first step.
    """

    def __init__(self, batches: Iterator[Any], state: Mapping[str, Any] | None) -> None:
        self._batches = batches
        self._state = state
        if state is not None:
            set_random_state(state, torch_too=False)

    def __iter__(self) -> ResumedBatches:
        return self

    def __next__(self) -> Any:
        batch = next(self._batches)
        if self._state is not None:
            _set_torch_state(self._state)
            self._state = None
        return batch
