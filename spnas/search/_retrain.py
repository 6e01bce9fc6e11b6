"""Retraining a network from scratch at equal training: the verification of a search.

The search scores a candidate after a short training from inherited weights, so its value
mixes the architecture with the training it inherited. :func:`retrain` gives every network the
same start instead: classification pretraining of its SerialNet from random weights (the
study's ImageFolder, else object crops of the detection set — ``reignite`` settings), then
detection training on one schedule, both seeded. Two networks retrained with the same seed and
schedule differ in their architecture alone (paper Fig. 4a: search ranking against full
training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spnas._io import atomic_write
from spnas.engines import DataSpec, InitWeights, NullReporter, Reporter, Schedule

if TYPE_CHECKING:
    from spnas.engines import Engine, TrialResult
    from spnas.pretrain import PretrainResult
    from spnas.search._config import SearchConfig

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A pretrained backbone and what it cost (optimizer steps)."""

    weights: Path
    iterations: int
    accuracy: float


@dataclasses.dataclass(frozen=True)
class Retrained:
    """A network retrained from scratch: its pretraining (``None``: from random weights) and
    its detection trial."""

    pretrained: Pretrained | None
    detection: TrialResult

    @property
    def iterations(self) -> int:
        """Optimizer steps of both trainings (the compute a budget counts)."""
        pretraining = self.pretrained.iterations if self.pretrained else 0
        return pretraining + self.detection.iterations


def _pretrained(result: PretrainResult, batch_size: int) -> Pretrained:
    steps = result.epochs * math.ceil(result.num_train / batch_size)
    return Pretrained(Path(result.weights), steps, result.accuracy)


def pretrain_backbone(
    config: SearchConfig,
    arch: Any,
    out: Path,
    *,
    init: Path | None = None,
    seed: int | None = None,
) -> Pretrained:
    """Classification pretraining of the SerialNet ``arch`` (``reignite`` settings).

    Args:
        config: the study configuration (``reignite``, ``model``, ``data``, ``schedule``).
        arch: serial code of the network.
        out: where the backbone state dict is written.
        init: a backbone state dict to start from; ``None`` starts from random weights.
        seed: pretraining seed; ``search.seed`` when ``None``.

    Returns:
        The weights, the optimizer steps taken and the classification accuracy.
    """
    from spnas.pretrain import PretrainConfig, pretrain

    r = config.reignite
    result = pretrain(
        arch,
        out,
        data=None if r.imagefolder else config.data.dir,
        imagefolder=r.imagefolder,
        config=PretrainConfig(
            epochs=r.epochs,
            batch_size=r.batch_size,
            lr=r.lr,
            image_size=r.image_size,
            base_width=config.model.width,
            stem=config.model.stem,
            xb_groups=config.model.xb_groups,
            seed=config.search.seed if seed is None else seed,
            rescale_weights=r.rescale_weights,
        ),
        init_weights=init,
        norm=config.model.norm,
        device=config.schedule.device,
        show_progress=config.engine.show_progress,
    )
    return _pretrained(result, r.batch_size)


def keep_sidecar(weights: Path, out_dir: Path) -> None:
    """Copy the ``<weights>.json`` record of a pretraining into the trial folder ``out_dir``
    (logs and metrics stay there) when it was written elsewhere (a checkpoint folder, deleted
    once the trial is done)."""
    sidecar = weights.with_name(weights.name + ".json")
    if sidecar.parent.resolve() != Path(out_dir).resolve():
        atomic_write(out_dir / sidecar.name, lambda tmp: shutil.copyfile(sidecar, tmp))


def retrain(
    config: SearchConfig,
    arch: Any,
    parallel: Any = None,
    *,
    seed: int,
    out_dir: str | Path,
    schedule: Schedule | None = None,
    engine: Engine | None = None,
    data: DataSpec | None = None,
    reporter: Reporter | None = None,
    checkpoint_dir: str | Path | None = None,
    pretrain: bool = True,
) -> Retrained:
    """Train the detector of ``arch`` (and ``parallel``) from scratch, as every other network.

    Pretrains the SerialNet ``arch`` from random weights with ``seed``, builds the detector
    (an SPNet's subnets start as copies of their stage, as in the search), and trains it with
    ``schedule`` (default: the study's search schedule) seeded with ``seed``. Without
    ``pretrain``, the detector starts from random weights drawn with ``seed`` (the control
    that shows what reignition's pretraining is worth: ``benchmarks/profiles.py --init``).

    Args:
        config: the study configuration.
        arch: serial code.
        parallel: parallel code, or ``None`` for a SerialNet detector.
        seed: seeds both the pretraining and the detection training.
        out_dir: where the backbone and the detector's weights are written.
        schedule: detection schedule; its ``seed`` is replaced by ``seed``.
        engine: the engine; by default the study's.
        data: the data set; by default the study's.
        reporter: receives the evaluations (e.g. an Optuna reporter).
        checkpoint_dir: where the pretraining (its backbone and epoch checkpoint) and the
            detection training keep what a retry resumes from (see
            :meth:`~spnas.engines.Engine.train_eval`); ``None``: ``out_dir``, and the
            detection training starts from the beginning.
        pretrain: whether the backbone is pretrained (``reignite`` settings) first.

    Returns:
        The pretraining (weights, steps) and the detection trial's result (metrics, weights,
        cost).
    """
    from spnas.data.coco import DatasetSplits
    from spnas.search._objective import build_search_engine

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = engine or build_search_engine(config)
    if data is None:
        data = DataSpec(
            DatasetSplits.from_dir(config.data.dir), config.data.metric, config.data.lamr_category
        )
    num_classes = len(data.splits.load("train", check_images=False).categories)
    schedule = dataclasses.replace(schedule or config.schedule, seed=seed)
    pretrained = None
    if pretrain:
        backbone = Path(checkpoint_dir or out_dir) / "pretrained_backbone.pth"
        pretrained = pretrain_backbone(config, arch, backbone, seed=seed)
        keep_sidecar(pretrained.weights, out_dir)
    spec = config.model_spec(arch, parallel, num_classes)
    _logger.info("retraining %s%s with seed %d", arch, f" {parallel}" if parallel else "", seed)
    detection = engine.train_eval(
        spec,
        InitWeights(pretrained.weights) if pretrained else None,
        schedule,
        data,
        reporter or NullReporter(),
        out_dir=out_dir,
        checkpoint_dir=checkpoint_dir,
    )
    return Retrained(pretrained, detection)
