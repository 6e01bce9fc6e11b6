"""The values an engine works with: what to train, how, on what, from which weights, and
what a trial measured.

:class:`ModelSpec` (architecture and detector settings), :class:`Schedule`, :class:`DataSpec`
and :class:`InitWeights` go into :meth:`spnas.engines.Engine.train_eval`; a
:class:`TrialResult` comes out. They are plain frozen dataclasses with ``to_dict`` /
``from_dict`` so that the search can store them in Optuna's trial attributes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spnas.arch import ParallelCode, SerialCode
from spnas.data.coco import DatasetSplits
from spnas.exceptions import ConfigError, SpnasError
from spnas.lr_schedule import cosine_lr

if TYPE_CHECKING:
    from torch import nn

METRIC_DIRECTIONS: dict[str, str] = {
    "AP": "maximize",
    "AP50": "maximize",
    "AP75": "maximize",
    "APs": "maximize",
    "APm": "maximize",
    "APl": "maximize",
    "LAMR": "minimize",
}


class TrialDiverged(SpnasError, FloatingPointError):
    """Training produced a non-finite loss; the trial ends, the process stays usable.

    A divergence is a result, not a fault: the same network, seed and schedule diverge again
    when retried, so the search records it (where, at which loss) instead of retrying it.

    Attributes:
        iteration: the training iteration (0-based) whose loss or predictions were not
            finite; ``None`` when unknown.
        loss: the total loss at that iteration (non-finite), or the last finite one when the
            predictions diverged before a loss was computed; ``None`` when unknown.
        seed: the schedule's seed; ``None`` when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        iteration: int | None = None,
        loss: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.loss = loss
        self.seed = seed

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword attributes survive pickling (a data-parallel process raises it to its parent).
        return (type(self), (str(self),), dict(self.__dict__))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The detector a trial trains.

    Attributes:
        arch: serial code of the backbone.
        parallel: parallel code; ``None`` for a SerialNet backbone.
        num_classes: foreground classes of the data set.
        base_width: backbone base width.
        stem: ``"resnet"`` or ``"deep"``.
        norm: backbone norm (``BN``, ``SyncBN``, ``FrozenBN``, ``GN``).
        xb_groups: groups of XB blocks' 3×3 convs.
        fpn_channels: FPN output channels.
        anchor_size: anchor size at the stride-4 level (``p2``); it doubles per level. 32 suits
            COCO-size images (800 px); use 8 for 128 px images.
    """

    arch: SerialCode
    num_classes: int
    parallel: ParallelCode | None = None
    base_width: int = 64
    stem: str = "resnet"
    norm: str = "BN"
    xb_groups: int = 32
    fpn_channels: int = 256
    anchor_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", SerialCode.parse(self.arch))
        if self.parallel is not None:
            parallel = ParallelCode.parse(self.parallel)
            if parallel.num_stages != self.arch.num_stages:
                raise ConfigError(
                    f"parallel code {parallel} has {parallel.num_stages} stages, expected "
                    f"{self.arch.num_stages} to match {self.arch}"
                )
            object.__setattr__(self, "parallel", parallel)
        if self.num_classes < 1:
            raise ConfigError(f"num_classes={self.num_classes!r}: expected at least 1")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.arch.stage_names

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["arch"] = str(self.arch)
        values["parallel"] = None if self.parallel is None else str(self.parallel)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long and how a trial trains (paper §4: the fast scheme for search trials).

    Length is ``iters`` when given, else ``epochs`` over the training set.

    Attributes:
        name: ``"fast"`` (cosine LR, the search's short runs) or ``"full"`` (steps ×0.1).
        iters: training iterations.
        epochs: training epochs (used when ``iters`` is ``None``).
        ims_per_batch: images per iteration.
        base_lr: peak learning rate (0.02 for 16 images per batch in the paper).
        min_lr: final learning rate of the cosine schedule.
        momentum, weight_decay: SGD settings.
        steps: for ``full``: fractions of training where the LR drops ×0.1 (16/24, 22/24).
        warmup_iters: linear warm-up length.
        eval_period: evaluate every this many iterations (0: only at the end).
        min_size, max_size: training and test image resizing (shorter side, longer side cap).
        num_workers: data loading processes.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: random seed.
        gpus_per_trial: processes a trial trains in, data-parallel (one per GPU; Gloo on
            the CPU). ``ims_per_batch`` is the total batch over them and ``base_lr`` is used
            as given (detectron2's ``SOLVER.REFERENCE_WORLD_SIZE: 0``), so the result does
            not depend on the process count (:mod:`spnas.engines.distributed`).
        amp: mixed precision on CUDA (detectron2's ``SOLVER.AMP.ENABLED``; ``torch.autocast``
            and a grad scaler in the torchvision engine). On the CPU a warning is logged and
            training runs in float32.
    """

    name: str = "fast"
    iters: int | None = None
    epochs: float | None = 3.0
    ims_per_batch: int = 16
    base_lr: float = 0.02
    min_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps: tuple[float, ...] = (16 / 24, 22 / 24)
    warmup_iters: int = 100
    eval_period: int = 0
    min_size: int = 800
    max_size: int = 1333
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0
    gpus_per_trial: int = 1
    amp: bool = False

    def __post_init__(self) -> None:
        if self.name not in ("fast", "full"):
            raise ConfigError(f"schedule name {self.name!r}: expected 'fast' or 'full'")
        if self.iters is None and self.epochs is None:
            raise ConfigError("schedule needs iters or epochs")
        if self.iters is not None and self.iters < 1:
            raise ConfigError(f"schedule iters={self.iters!r}: expected a positive integer")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"schedule epochs={self.epochs!r}: expected a positive number")
        if self.ims_per_batch < 1:
            raise ConfigError(f"schedule ims_per_batch={self.ims_per_batch!r}: expected ≥ 1")
        if self.gpus_per_trial < 1 or self.ims_per_batch % self.gpus_per_trial:
            raise ConfigError(
                f"schedule gpus_per_trial={self.gpus_per_trial!r}: expected a positive "
                f"divisor of ims_per_batch={self.ims_per_batch} (the total batch, split "
                "evenly over the processes)"
            )
        object.__setattr__(self, "steps", tuple(self.steps))

    @classmethod
    def fast(cls, **overrides: Any) -> Schedule:
        """The paper's fast scheme: SGD 0.9, wd 1e-4, cosine 0.02 → 1e-4, a few epochs."""
        return cls(**{"name": "fast", "epochs": 3.0, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> Schedule:
        """The paper's full scheme: 24 epochs, LR ×0.1 at epochs 16 and 22."""
        return cls(**{"name": "full", "epochs": 24.0, **overrides})

    def total_iters(self, num_train_images: int) -> int:
        if self.iters is not None:
            return self.iters
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * num_train_images / self.ims_per_batch))

    def lr_at(self, iteration: int, total: int) -> float:
        """The learning rate at ``iteration`` of ``total`` (with linear warm-up)."""
        warmup = min(self.warmup_iters, max(total // 5, 1))
        factor = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
        if self.name == "fast":
            lr = cosine_lr(iteration, total, self.base_lr, self.min_lr)
        else:
            progress = min(iteration / max(total, 1), 1.0)
            lr = self.base_lr * 0.1 ** sum(progress >= s for s in self.steps)
        return lr * factor

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["steps"] = list(self.steps)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Schedule:
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ConfigError(
                    f"unknown schedule key {key!r}, expected one of {', '.join(sorted(fields))}"
                )
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The data a trial trains and evaluates on.

    Attributes:
        splits: train/val json and image root.
        metric: the trial's objective: ``AP`` (COCO, BDD), ``AP50`` (VOC), ``LAMR`` (ECP).
        lamr_category: category id LAMR is computed on (``None``: mean over categories).
    """

    splits: DatasetSplits
    metric: str = "AP"
    lamr_category: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"metric {self.metric!r}: expected one of {', '.join(METRIC_DIRECTIONS)}"
            )

    @classmethod
    def from_dir(cls, root: str | Path, metric: str = "AP", **kwargs: Any) -> DataSpec:
        return cls(DatasetSplits.from_dir(root), metric, **kwargs)

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS[self.metric]


@dataclasses.dataclass(frozen=True)
class InitWeights:
    """Weights a trial starts from.

    Attributes:
        path: a state dict: a whole detector's, or a bare backbone's.
        parent_arch: the architecture the weights belong to; ``None`` when it is the trial's.
        parent_parallel: the parallel code the weights belong to (``None``: serial).
        ops: the morphisms from ``parent_arch`` to the trial's architecture.
    """

    path: Path
    parent_arch: SerialCode | None = None
    parent_parallel: ParallelCode | None = None
    ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.parent_arch is not None:
            object.__setattr__(self, "parent_arch", SerialCode.parse(self.parent_arch))
        if self.parent_parallel is not None:
            object.__setattr__(self, "parent_parallel", ParallelCode.parse(self.parent_parallel))
        object.__setattr__(self, "ops", tuple(str(op) for op in self.ops))


@dataclasses.dataclass
class TrialResult:
    """What one trial measured.

    ``metrics`` holds COCO AP, AP50, AP75, APs, APm, APl and ``AP-<class>`` in percent (NaN
    where a size range has no object), and ``LAMR`` as a fraction when requested.
    """

    metrics: dict[str, float]
    weights: Path
    gmacs: float
    params_m: float
    train_seconds: float
    eval_seconds: float
    images_per_second: float
    iterations: int
    inherited_fraction: float | None = None

    def metric(self, name: str) -> float:
        if name not in self.metrics:
            raise ConfigError(f"metric {name!r} was not computed; have {sorted(self.metrics)}")
        return self.metrics[name]

    def to_dict(self) -> dict[str, Any]:
        def clean(value: float) -> float | None:
            return None if isinstance(value, float) and not math.isfinite(value) else value

        values = dataclasses.asdict(self)
        values["weights"] = str(self.weights)
        values["metrics"] = {k: clean(v) for k, v in self.metrics.items()}
        return values


class Reporter(Protocol):
    """Receives a trial's progress; the search forwards evaluations to Optuna for pruning.

    ``evaluation`` may raise :class:`optuna.TrialPruned`; engines let it propagate.
    """

    def progress(self, iteration: int, total: int, loss: float) -> None: ...

    def evaluation(self, iteration: int, metrics: Mapping[str, float]) -> None: ...


class NullReporter:
    """A reporter that ignores everything."""

    def progress(self, iteration: int, total: int, loss: float) -> None:
        pass

    def evaluation(self, iteration: int, metrics: Mapping[str, float]) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class ExportedDetector:
    """What :meth:`spnas.engines.Engine.export` built and wrote.

    Attributes:
        model: the trained detector as the engine builds it, weights loaded, on the CPU.
        config: the detectron2 config written beside the weights (``None``: not written).
        torchvision: the detector as a torchvision file (``None``: not written).
        skipped: one ``"<file>: <reason>"`` line per file the engine could not write.
    """

    model: nn.Module
    config: Path | None = None
    torchvision: Path | None = None
    skipped: tuple[str, ...] = ()
