"""The engine contract: what every engine implements, with the same signatures.

An engine turns a :class:`ModelSpec` (architecture and detector settings), optional
:class:`InitWeights`, a :class:`Schedule` and a :class:`DataSpec` into a :class:`TrialResult`.
The search calls it once per trial; ``spnas train-eval`` calls it from the command line and
``spnas export`` calls :meth:`Engine.export`. Engines are registered by name and built from
their config section with :func:`build_engine` (:mod:`spnas.engines._registry`).

Weights files are whole-detector state dicts (as the engine's model names them); a file whose
keys are a bare backbone's (``stem.*``, ``res2.*`` — e.g. from ``spnas pretrain``) initialises
the backbone only.

The value types and the registry are defined in :mod:`spnas.engines._types` and
:mod:`spnas.engines._registry`; import them, as :class:`Engine` itself, from
:mod:`spnas.engines`.
"""

from __future__ import annotations

import abc
import functools
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from spnas._io import atomic_write
from spnas.engines._types import (
    DataSpec,
    ExportedDetector,
    InitWeights,
    ModelSpec,
    Reporter,
    Schedule,
    TrialResult,
)
from spnas.exceptions import ConfigError, WeightsError

__all__ = ["Engine", "save_state_dict"]

_logger = logging.getLogger(__name__)


class Engine(abc.ABC):
    """Trains, evaluates and exports detectors with SPNet backbones.

    Subclasses implement the four abstract methods with exactly these signatures, so that
    callers never ask which engine they hold. Weights loading and inheritance
    (:meth:`initialize`) are shared, so every engine inherits identically.
    """

    #: The name the engine is registered under (:func:`register_engine`).
    name: ClassVar[str] = ""
    #: Show a progress bar while training (set False in batch jobs and tests).
    show_progress: bool = True

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Engine:
        """The engine an ``engine`` config section describes: its keys other than ``name``.

        The default passes ``options`` to the constructor as keyword arguments; engines
        whose section keys differ from their constructor's override it.

        Raises:
            ConfigError: naming an option the constructor does not take.
        """
        parameters = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            for key in options:
                if key not in parameters:
                    raise ConfigError(
                        f"engine {cls.name!r} has no option {key!r}, expected one of "
                        f"{', '.join(sorted(parameters))}"
                    )
        return cls(**options)

    def check(self) -> None:
        """Check what the engine will read (its config files) before a study is created, so
        bad input fails at once, naming the file. Engines that read nothing of their own
        keep this default, which checks nothing.

        Raises:
            ConfigError: naming the file and what is wrong with it.
        """
        return None

    @abc.abstractmethod
    def build_model(self, spec: ModelSpec, schedule: Schedule | None = None) -> nn.Module:
        """A detector for ``spec`` with random weights (new blocks not yet identities).

        ``schedule`` sets what the detector takes from training (image sizes, the base
        config of its scheme); the :class:`Schedule` defaults when ``None``.
        """

    @abc.abstractmethod
    def train_eval(
        self,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
        *,
        checkpoint_dir: str | Path | None = None,
    ) -> TrialResult:
        """Train ``spec`` from ``init_weights`` by ``schedule`` on ``data``; evaluate on val.

        Evaluates every ``schedule.eval_period`` iterations (when positive) and at the end,
        passing the metrics to ``reporter.evaluation`` (which may raise
        :class:`optuna.TrialPruned`; it propagates). Writes the trained detector's state dict
        to ``out_dir/model_final.pth``.

        ``checkpoint_dir``: where training keeps resumable checkpoints (model, optimizer, LR
        scheduler, iteration), read without running code. When it holds one already (a
        preempted run of the same training), training resumes from it instead of starting
        over; ``init_weights`` then only sets what the checkpoint does not hold. The caller
        owns the folder (the search keys it by the trial's decision and deletes it when the
        decision is done). ``None``: no resumable checkpoints. An engine that cannot resume
        says so in its docstring and trains from the beginning.

        Raises:
            TrialDiverged: when the loss becomes non-finite.
        """

    @abc.abstractmethod
    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
    ) -> dict[str, float]:
        """Evaluate ``spec`` initialised from ``weights`` on the validation split, untrained.

        Uses the schedule's device, seed (for randomly initialised tensors) and image sizes.
        """

    @abc.abstractmethod
    def export(
        self,
        spec: ModelSpec,
        weights: Path,
        schedule: Schedule,
        data: DataSpec,
        out_dir: Path,
    ) -> ExportedDetector:
        """Rebuild the detector ``weights`` (a state dict this engine trained) belongs to and
        write what its users load into ``out_dir``: a torchvision detector file
        (``model_torchvision.pth``) where the heads allow it, and the engine's own files.

        ``schedule`` is the one the detector is to be trained or run with (the study's full
        scheme); ``data`` the data set it was trained on.
        """

    def initialize(self, model: nn.Module, init: InitWeights | None) -> float | None:
        """Load ``init`` into ``model`` through its morphisms; returns the inherited fraction."""
        from spnas.modeling import is_bare_backbone
        from spnas.modeling.torchvision_weights import read_weights
        from spnas.morphism import find_backbone, inherit

        if init is None:
            return None
        state = read_weights(init.path)
        prefix, backbone = find_backbone(model)
        if prefix and is_bare_backbone(state):
            state = {prefix + k: v for k, v in state.items()}
        report = inherit(
            state,
            init.parent_arch or backbone.code,
            model,
            init.ops,
            parent_parallel=init.parent_parallel,
        )
        if not report.matched:
            raise WeightsError(
                f"weights file {str(init.path)!r} has no tensor that fits the {self.name} "
                f"model of {backbone.code}: expected a {self.name} detector or bare backbone "
                "state dict"
            )
        _logger.info("%s: %s", init.path, report.summary())
        return report.fraction


def save_state_dict(model: nn.Module, path: Path) -> Path:
    """Write ``model``'s weights as a plain state dict (``torch.load(weights_only=True)``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, functools.partial(torch.save, state))
