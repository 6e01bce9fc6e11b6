"""The detectron2 engine: trains a trial's detector with :class:`SPNASTrainer`."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.utils.env import seed_all_rng
from torch import nn

from spnas._io import atomic_write
from spnas.data.coco import load_coco
from spnas.device import resolve_device
from spnas.engines._registry import register_engine
from spnas.engines._types import (
    DataSpec,
    ExportedDetector,
    InitWeights,
    ModelSpec,
    Reporter,
    Schedule,
    TrialDiverged,
    TrialResult,
)
from spnas.engines.base import Engine, save_state_dict
from spnas.engines.detectron2.config import (
    changed_keys,
    config_path,
    configure_levels,
    get_spnas_cfg,
)
from spnas.engines.detectron2.data import register_coco_split
from spnas.engines.detectron2.hooks import latest_loss
from spnas.engines.detectron2.trainer import SPNASTrainer, flatten_metrics
from spnas.engines.distributed import data_parallel, is_main_process, unwrap
from spnas.exceptions import ConfigError, WeightsError
from spnas.modeling.flops import cost
from spnas.modeling.torchvision_weights import read_weights

_logger = logging.getLogger(__name__)

_BASE_CONFIGS = {
    "fast": "faster_rcnn_spnet_fpn_fast.yaml",
    "full": "faster_rcnn_spnet_fpn_full.yaml",
}


#: detectron2's messages for non-finite losses, proposals and boxes (``FloatingPointError``
#: from the trainer and the RPN; ``AssertionError`` from ``Boxes.clip``).
_DIVERGED = ("infinite or nan", "inf/nan")
#: A number in detectron2's ``loss_dict = {...}`` (``nan``, ``inf``, ``np.float64(1.5)``).
_LOSS_VALUE = re.compile(r":\s*(?:np\.float\d+\()?(-?(?:nan|inf|\d[\d.]*(?:e[-+]?\d+)?))")


def _is_divergence(exc: BaseException) -> bool:
    """Whether detectron2 raised ``exc`` because the training diverged (Inf/NaN)."""
    return any(text in str(exc).lower() for text in _DIVERGED)


def _diverged_loss(message: str, last: float) -> float:
    """The total loss detectron2 found non-finite (the sum of its ``loss_dict``), else
    ``last``: the last finite loss, when predictions diverged before a loss was computed."""
    _, sep, losses = message.partition("loss_dict")
    values = [float(v) for v in _LOSS_VALUE.findall(losses)] if sep else []
    return sum(values) if values else last


def _last_loss(trainer: SPNASTrainer) -> float:
    """The last finite total loss; NaN when training stopped before its events storage."""
    return latest_loss(trainer) if hasattr(trainer, "storage") else math.nan


def _resume(trainer: SPNASTrainer) -> None:
    """Resume ``trainer`` from the last checkpoint in its checkpointer's folder, if any.

    A checkpoint that cannot be read safely (:class:`WeightsError`), or that
    ``last_checkpoint`` names but is gone, is not a reason to fail the trial: it trains from
    the beginning, and its next checkpoint replaces that one.
    """
    if not trainer.checkpointer.has_checkpoint():
        return
    path = trainer.checkpointer.get_checkpoint_file()
    if not os.path.isfile(path):
        _logger.warning("checkpoint %s is gone; training from the beginning", path)
        return
    try:
        trainer.resume_or_load(resume=True)
    except WeightsError as exc:
        _logger.warning("%s; training from the beginning", exc)
        trainer.start_iter = 0
        return
    _logger.info(
        "resumed from %s at iteration %d of %d",
        path,
        trainer.start_iter,
        trainer.max_iter,
    )


def apply_spec(cfg: CfgNode, spec: ModelSpec) -> CfgNode:
    """Write a trial's model settings into a config (levels: see ``configure_levels``).

    The anchor sizes of the first level keep the config's ratios between them (e.g. ×1, ×√2)
    and start at ``spec.anchor_size``.
    """
    cfg.MODEL.SPNAS.ARCH = str(spec.arch)
    cfg.MODEL.SPNAS.PARALLEL = [] if spec.parallel is None else list(spec.parallel.subnets)
    cfg.MODEL.SPNAS.BASE_WIDTH = spec.base_width
    cfg.MODEL.SPNAS.STEM = spec.stem
    cfg.MODEL.SPNAS.NORM = spec.norm
    cfg.MODEL.SPNAS.XB_GROUPS = spec.xb_groups
    cfg.MODEL.FPN.OUT_CHANNELS = spec.fpn_channels
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = spec.num_classes
    first = cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[spec.anchor_size * size / first[0] for size in first]]
    return cfg


def _opts_problem(cfg: CfgNode, key: str, value: Any, exc: BaseException) -> str:
    """What is wrong with the override ``key value`` of ``cfg`` (``merge_from_list`` failed
    with ``exc``): an unknown key, a section given a value, or a value of another type."""
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, CfgNode) or part not in node:
            known = ", ".join(sorted(node)[:12]) if isinstance(node, CfgNode) else ""
            where = ".".join(parts[:depth]) or "the config"
            return (
                f"{key!r} is not a detectron2 config key ({where} has no {part!r}"
                + (f"; it has {known}, …" if known else "")
                + ")"
            )
        node = node[part]
    if isinstance(node, CfgNode):
        return f"{key!r} is a section of the detectron2 config, expected a key with a value"
    return (
        f"{key!r} is {value!r}, expected a value of type {type(node).__name__} like its "
        f"default {node!r} "
        f"({str(exc).splitlines()[0][:200]})"
    )


@register_engine("detectron2")
class Detectron2Engine(Engine):
    """Trains Faster R-CNN (or any detectron2 meta-architecture) on an SPNet-FPN backbone.

    Args:
        config_file: a detectron2 YAML to start from; by default the shipped
            ``faster_rcnn_spnet_fpn_{fast,full}.yaml`` matching the schedule. Keys derived
            from the trial (architecture, classes, schedule, data) override it.
        opts: ``["KEY", value, …]`` overrides applied after the trial's keys.
        show_progress: show a progress bar while training.
    """

    name = "detectron2"

    def __init__(
        self,
        config_file: str | Path | None = None,
        opts: list[str] | tuple[str, ...] = (),
        show_progress: bool = True,
    ) -> None:
        self.config_file = None if config_file is None else Path(config_file)
        self.opts = list(opts)
        self.show_progress = show_progress

    def build_cfg(
        self,
        spec: ModelSpec,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
        *,
        resumable: bool = False,
    ) -> CfgNode:
        """The detectron2 config of a trial; ``resumable``: with periodic checkpoints in the
        fast scheme too (a search trial that may be preempted, see :meth:`train_eval`)."""
        base = self.config_file or config_path(_BASE_CONFIGS[schedule.name])
        cfg = get_spnas_cfg(str(base))
        splits = data.splits
        train_name = register_coco_split(splits.train_json, splits.image_root)
        val_name = register_coco_split(splits.val_json, splits.image_root)
        num_train = len(load_coco(splits.train_json, splits.image_root, check_images=False))
        total = schedule.total_iters(num_train)

        apply_spec(cfg, spec)
        cfg.MODEL.DEVICE = str(resolve_device(schedule.device))
        cfg.MODEL.WEIGHTS = ""
        cfg.DATASETS.TRAIN = (train_name,)
        cfg.DATASETS.TEST = (val_name,)
        cfg.INPUT.MIN_SIZE_TRAIN = (schedule.min_size,)
        cfg.INPUT.MAX_SIZE_TRAIN = schedule.max_size
        cfg.INPUT.MIN_SIZE_TEST = schedule.min_size
        cfg.INPUT.MAX_SIZE_TEST = schedule.max_size
        cfg.DATALOADER.NUM_WORKERS = schedule.num_workers
        # The total batch over all processes, at the schedule's LR whatever their number.
        cfg.SOLVER.IMS_PER_BATCH = schedule.ims_per_batch
        cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
        cfg.SOLVER.AMP.ENABLED = schedule.amp
        cfg.SOLVER.BASE_LR = schedule.base_lr
        cfg.SOLVER.BASE_LR_END = schedule.min_lr
        cfg.SOLVER.MOMENTUM = schedule.momentum
        cfg.SOLVER.WEIGHT_DECAY = schedule.weight_decay
        cfg.SOLVER.MAX_ITER = total
        cfg.SOLVER.WARMUP_ITERS = min(schedule.warmup_iters, max(total // 5, 1))
        if schedule.name == "fast":
            cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
        else:
            cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
            # A short run rounds several drops onto one iteration (or onto 0 or the end):
            # detectron2's multi-step scheduler needs distinct milestones inside the run.
            drops = {int(s * total) for s in schedule.steps}
            cfg.SOLVER.STEPS = tuple(sorted(i for i in drops if 0 < i < total))
        # A checkpoint every quarter of the run at least; a resumable run checkpoints even
        # when its config says 0 (the fast scheme's), a fast run that nothing resumes never
        # (re-run whole when retried).
        period, quarter = cfg.SOLVER.CHECKPOINT_PERIOD, max(total // 4, 1)
        if resumable and period <= 0:
            cfg.SOLVER.CHECKPOINT_PERIOD = quarter
        elif schedule.name == "fast" and not resumable:
            cfg.SOLVER.CHECKPOINT_PERIOD = 0
        else:
            cfg.SOLVER.CHECKPOINT_PERIOD = min(period, quarter)
        cfg.TEST.EVAL_PERIOD = schedule.eval_period
        cfg.TEST.LAMR.ENABLED = data.metric == "LAMR"
        cfg.TEST.LAMR.CATEGORY_ID = -1 if data.lamr_category is None else data.lamr_category
        cfg.SEED = schedule.seed
        cfg.OUTPUT_DIR = str(Path(out_dir) / "detectron2")
        if self.opts:
            cfg.merge_from_list(self.opts)
        return configure_levels(cfg)

    def check(self) -> None:
        """The config file exists and reads as safe YAML (a python tag fails, naming it), and
        ``opts`` apply to it as :meth:`build_cfg` applies them: every key exists, every value
        has the key's type.

        Raises:
            ConfigError: ``config: …`` naming the file, or ``opts: …`` naming the key.
        """
        if self.config_file is not None and not self.config_file.is_file():
            raise ConfigError(
                f"detectron2 config {str(self.config_file)!r} does not exist (relative paths "
                "in a study YAML are relative to the YAML's folder)"
            )
        if len(self.opts) % 2:
            raise ConfigError(f"opts: {len(self.opts)} items, expected KEY, VALUE pairs")
        base = self.config_file or config_path(_BASE_CONFIGS["fast"])
        cfg = get_spnas_cfg(str(base))
        for i in range(0, len(self.opts), 2):
            key, value = self.opts[i], self.opts[i + 1]
            try:
                cfg.merge_from_list([key, value])
            except (AssertionError, KeyError, ValueError, TypeError, SyntaxError) as exc:
                raise ConfigError(f"opts: {_opts_problem(cfg, str(key), value, exc)}") from None
        if self.opts:
            try:
                configure_levels(cfg)
            except ConfigError as exc:
                raise ConfigError(f"opts: {exc}") from None

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Detectron2Engine:
        """The engine of an ``engine`` section: ``config`` (a detectron2 YAML), ``opts``,
        ``show_progress``."""
        options = dict(options)
        if "config" in options:
            options["config_file"] = options.pop("config")
        return super().from_config(options)

    def build_model(self, spec: ModelSpec, schedule: Schedule | None = None) -> nn.Module:
        """A detector for ``spec`` on the CPU, from the config of ``schedule``'s scheme (the
        fast one when ``None``) with ``spec`` applied; :meth:`build_cfg` adds the data."""
        name = (schedule or Schedule()).name
        cfg = get_spnas_cfg(str(self.config_file or config_path(_BASE_CONFIGS[name])))
        apply_spec(cfg, spec)
        cfg.MODEL.DEVICE = "cpu"
        return SPNASTrainer.build_model(configure_levels(cfg))

    @data_parallel
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
        """See :meth:`Engine.train_eval`. With ``checkpoint_dir``, a checkpoint is written
        there every ``SOLVER.CHECKPOINT_PERIOD`` iterations (at most a quarter of the run, the
        fast scheme included; only the latest kept), and training resumes from the one found
        there as detectron2's ``resume_or_load(resume=True)`` does: weights, optimizer, LR
        scheduler and iteration. The data loader and augmentations start their random streams
        again at the resumed iteration, so a resumed run is close to, not bit-identical with,
        an uninterrupted one."""
        out_dir = Path(out_dir)
        cfg = self.build_cfg(spec, schedule, data, out_dir, resumable=checkpoint_dir is not None)
        Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        seed_all_rng(schedule.seed)
        trainer = SPNASTrainer(
            cfg,
            reporter=reporter,
            show_progress=self.show_progress,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        )
        # Every process loads the same weights into its replica.
        inherited = self.initialize(unwrap(trainer.model), init_weights)
        if checkpoint_dir is not None:
            _resume(trainer)
        started = time.perf_counter()
        try:
            trainer.train()
        except (FloatingPointError, AssertionError) as exc:
            if isinstance(exc, AssertionError) and not _is_divergence(exc):
                raise
            raise TrialDiverged(
                f"training {spec.arch} diverged at iteration {trainer.iter} "
                f"(seed {schedule.seed}, lr {schedule.base_lr}, warmup "
                f"{cfg.SOLVER.WARMUP_ITERS}): {str(exc).splitlines()[0]}; lower base_lr or "
                "raise warmup_iters",
                iteration=trainer.iter,
                loss=_diverged_loss(str(exc), _last_loss(trainer)),
                seed=schedule.seed,
            ) from exc
        elapsed = time.perf_counter() - started
        train_seconds = max(elapsed - trainer.eval_seconds, 1e-9)
        weights = out_dir / "model_final.pth"
        if is_main_process():
            save_state_dict(unwrap(trainer.model), weights)
        report = cost(
            spec.arch,
            spec.parallel,
            base_width=spec.base_width,
            stem=spec.stem,
            input_size=(schedule.min_size, schedule.min_size),
        )
        iterations = cfg.SOLVER.MAX_ITER
        trained = iterations - trainer.start_iter
        return TrialResult(
            metrics=dict(trainer.last_metrics),
            weights=weights,
            gmacs=report.gmacs,
            params_m=report.params_m,
            train_seconds=train_seconds,
            eval_seconds=trainer.eval_seconds,
            images_per_second=trained * schedule.ims_per_batch / train_seconds,
            iterations=iterations,
            inherited_fraction=inherited,
        )

    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
    ) -> dict[str, float]:
        cfg = self.build_cfg(spec, schedule, data, out_dir)
        model = SPNASTrainer.build_model(cfg)
        self.initialize(model, weights)
        with torch.no_grad():
            return flatten_metrics(SPNASTrainer.test(cfg, model))

    def export(
        self,
        spec: ModelSpec,
        weights: Path,
        schedule: Schedule,
        data: DataSpec,
        out_dir: Path,
    ) -> ExportedDetector:
        """Write ``config.yaml`` (a detectron2 config whose ``MODEL.WEIGHTS`` is ``weights``
        and ``SPNAS.DATA_DIR`` the data set) and ``model_torchvision.pth`` (the detector
        converted, where torchvision can express its heads)."""
        from detectron2.config import get_cfg

        from spnas.engines.detectron2.to_torchvision import convert_state_dict, torchvision_layout
        from spnas.engines.torchvision import save_detector

        out_dir = Path(out_dir)
        cfg = self.build_cfg(spec, schedule, data, out_dir / "train")
        cfg.DATASETS.TRAIN = ()
        cfg.DATASETS.TEST = ()
        cfg.SPNAS.DATA_DIR = str(Path(data.splits.root).resolve())
        cfg.MODEL.WEIGHTS = str(Path(weights).resolve())
        # Only the keys that differ from detectron2's defaults: loadable by other versions.
        # The device is the user's (`spnas infer --device`, or cfg.MODEL.DEVICE): the
        # training device is not written, so a predictor gets detectron2's default.
        written = cfg.clone()
        written.MODEL.DEVICE = get_cfg().MODEL.DEVICE
        text = changed_keys(written).dump()
        config = atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(text))
        cfg.MODEL.DEVICE = "cpu"  # the model converted below
        model = SPNASTrainer.build_model(cfg)
        state = read_weights(weights)
        model.load_state_dict(state)
        try:
            layout = torchvision_layout(cfg)
            detector_state = convert_state_dict(state, layout)
        except ConfigError as exc:
            return ExportedDetector(model, config, skipped=(f"model_torchvision.pth: {exc}",))
        torchvision = save_detector(detector_state, layout, out_dir / "model_torchvision.pth")
        return ExportedDetector(model, config, torchvision)
