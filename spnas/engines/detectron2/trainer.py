"""The detectron2 trainer for SPNet detectors.

:class:`SPNASTrainer` is detectron2's :class:`DefaultTrainer` with:

- ``WarmupCosineLR`` decaying to ``SOLVER.BASE_LR_END`` (the paper's 0.02 → 1e-4);
- COCO box evaluation (the pure-Python evaluator when detectron2's compiled ops are absent;
  AP 0 rather than NaN when nothing is detected),
  plus :class:`~spnas.engines.detectron2.evaluation.LAMREvaluator` when ``TEST.LAMR.ENABLED``;
- hooks for a progress bar and an spnas reporter, which also receives every evaluation (the
  search forwards it to Optuna for pruning);
- console and JSON event writers only (no TensorBoard dependency);
- periodic checkpoints only when ``SOLVER.CHECKPOINT_PERIOD`` is below ``SOLVER.MAX_ITER``;
  with ``checkpoint_dir`` they go there instead of ``OUTPUT_DIR``, only the latest kept (a
  search trial's resumable checkpoint, see :meth:`Engine.train_eval`);
- checkpoints that also hold the random state and the data stream's seed, so that a resumed
  run goes on with the batches and draws of the interrupted one
  (:mod:`spnas.engines.detectron2.resume`);
- data-parallel training on the CPU too (``DistributedDataParallel`` over Gloo, without the
  device ids detectron2 0.6 always passes), distributed evaluation, and writers and the
  progress bar in the main process only;
- ``SOLVER.AMP.ENABLED`` trains through ``torch.amp``
  (:class:`~spnas.engines.detectron2.amp.TorchAMPTrainer`; detectron2's ``AMPTrainer`` uses the
  deprecated ``torch.cuda.amp``); on the CPU it logs a warning and trains in float32.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger
from fvcore.common.param_scheduler import CosineParamScheduler

from spnas.device import resolve_amp
from spnas.engines._types import NullReporter, Reporter
from spnas.engines.detectron2.amp import TorchAMPTrainer
from spnas.engines.detectron2.checkpoint import AtomicCheckpointer
from spnas.engines.detectron2.compat import has_compiled_ops
from spnas.engines.detectron2.evaluation import LAMREvaluator, SearchCOCOEvaluator
from spnas.engines.detectron2.hooks import ProgressBarHook, ReporterHook
from spnas.engines.detectron2.resume import (
    ResumableSampler,
    ResumedBatches,
    random_state,
)

_logger = logging.getLogger(__name__)


def flatten_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """detectron2 results ``{"bbox": {"AP": …}, "lamr": {"LAMR": …}}`` → ``{"AP": …, "LAMR": …}``."""
    flat: dict[str, float] = {}
    for group in results.values():
        if isinstance(group, Mapping):
            flat.update({k: float(v) for k, v in group.items()})
    return flat


class SPNASTrainer(DefaultTrainer):
    """DefaultTrainer for SPNet detectors (see the module docstring).

    Args:
        cfg: a config with ``MODEL.SPNAS`` keys.
        reporter: receives progress and evaluations.
        show_progress: show a tqdm bar.
        checkpoint_dir: where periodic checkpoints go (only the latest kept); ``None``:
            ``cfg.OUTPUT_DIR``, all kept.
    """

    def __init__(
        self,
        cfg,
        reporter: Reporter | None = None,
        show_progress: bool = True,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.reporter = reporter or NullReporter()
        self.show_progress = show_progress
        self.checkpoint_dir = checkpoint_dir
        # The training sampler's seed (saved with every checkpoint) and, after a resume, the
        # random state its checkpoint held.
        self.sampler_seed: int | None = None
        self._resumed_random: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] = {}
        self.eval_seconds = 0.0
        # DefaultTrainer.__init__, but for the DDP device ids and AMP on the CPU.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # as DefaultTrainer: detectron2's logger was not set up
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        amp = resolve_amp(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        if amp != cfg.SOLVER.AMP.ENABLED:
            cfg = cfg.clone()
            cfg.SOLVER.AMP.ENABLED = amp
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        # A CPU module takes no device ids; detectron2 0.6 passes the local rank.
        ddp_options = {"device_ids": None} if on_cpu else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_options)
        self._trainer = (
            TorchAMPTrainer(model, data_loader, optimizer, torch.device(cfg.MODEL.DEVICE).type)
            if amp
            else SimpleTrainer(model, data_loader, optimizer)
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(
            model, checkpoint_dir or cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_train_loader(self, cfg, skip: int = 0):
        """detectron2's train loader; with its default sampler, one whose seed is kept in
        :attr:`sampler_seed` and that leaves out its first ``skip`` indices (a resumed run).
        Other samplers (``DATALOADER.SAMPLER_TRAIN``) start their stream again on resume."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return super().build_train_loader(cfg)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableSampler(len(dataset), seed=self.sampler_seed, skip=skip)
        self.sampler_seed = sampler.seed
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)

    def state_dict(self) -> dict[str, Any]:
        # detectron2 0.6 saves the iteration only: the optimizer (and AMP's grad scaler) and
        # the LR scheduler too, as later detectron2 versions do.
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        state["scheduler"] = self.scheduler.state_dict()
        state["random"] = random_state()
        if self.sampler_seed is not None:
            state["sampler_seed"] = self.sampler_seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # not in checkpoints written before 2026-12
            self._trainer.load_state_dict(state_dict["_trainer"])
        if "scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["scheduler"])
        self._resumed_random = state_dict.get("random")
        self.sampler_seed = state_dict.get("sampler_seed", self.sampler_seed)

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's, and a resumed run's data stream goes on where the checkpoint's run
        had come to, with its random state (see :mod:`spnas.engines.detectron2.resume`)."""
        self._resumed_random = None
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter > 0):
            return
        per_process = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        loader = self.build_train_loader(self.cfg, skip=self.start_iter * per_process)
        self._trainer.data_loader = loader
        self._trainer._data_loader_iter = ResumedBatches(iter(loader), self._resumed_random)

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        _logger.debug("model:\n%s", model)
        return model

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupCosineLR":
            return super().build_lr_scheduler(cfg, optimizer)
        end = cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR
        scheduler = WarmupParamScheduler(
            CosineParamScheduler(1.0, end),
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
        return LRMultiplier(optimizer, multiplier=scheduler, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str):
        evaluators = [
            SearchCOCOEvaluator(
                dataset_name,
                tasks=("bbox",),
                distributed=comm.get_world_size() > 1,
                output_dir=None,
                use_fast_impl=has_compiled_ops(),
            )
        ]
        if cfg.TEST.LAMR.ENABLED:
            category = cfg.TEST.LAMR.CATEGORY_ID
            evaluators.append(LAMREvaluator(dataset_name, None if category < 0 else category))
        return DatasetEvaluators(evaluators)

    def build_writers(self):
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]

    def build_hooks(self):
        cfg = self.cfg
        ret: list[hooks.HookBase] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if 0 < cfg.SOLVER.CHECKPOINT_PERIOD < cfg.SOLVER.MAX_ITER:
            # A resumable checkpoint needs only the latest: the others are disk spent. Only
            # the main process deletes (it writes them; another process could read
            # ``last_checkpoint`` before it moved on, and delete the file it still names).
            keep = 1 if self.checkpoint_dir and comm.is_main_process() else None
            ret.append(
                hooks.PeriodicCheckpointer(
                    self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=keep
                )
            )
        main = comm.is_main_process()
        description = f"train {cfg.MODEL.SPNAS.ARCH}"
        ret.append(ProgressBarHook(description, enabled=self.show_progress and main))
        ret.append(ReporterHook(self.reporter))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate_and_report))
        if main:
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def _evaluate_and_report(self) -> dict[str, Any]:
        started = time.perf_counter()
        results = self.test(self.cfg, self.model)
        self.eval_seconds += time.perf_counter() - started
        if not comm.is_main_process():  # distributed evaluation gathers results in rank 0
            return results
        self.last_metrics = flatten_metrics(results)
        # Periodic evaluations run after step ``iter``; the last one after training, when
        # ``iter`` has already moved past ``max_iter - 1``.
        self.reporter.evaluation(min(self.iter + 1, self.max_iter), self.last_metrics)
        return results
