"""The detectron2 trainer for SPNet detectors.

:class:`SPNASTrainer` is detectron2's :class:`DefaultTrainer` with:

- ``WarmupCosineLR`` decaying to ``SOLVER.BASE_LR_END`` (the paper's 0.02 → 1e-4);
- COCO box evaluation (the pure-Python evaluator when detectron2's compiled ops are absent;
  AP 0 rather than NaN when nothing is detected),
  plus :class:`~spnas.engines.detectron2.evaluation.LAMREvaluator` when ``TEST.LAMR.ENABLED``;
- hooks for a progress bar and an spnas reporter, which also receives every evaluation (the
  search forwards it to Optuna for pruning);
- console and JSON event writers only (no TensorBoard dependency);
- periodic checkpoints only when ``SOLVER.CHECKPOINT_PERIOD`` is below ``SOLVER.MAX_ITER``
  (fast search trials are short and are re-run whole when retried);
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
    """

    def __init__(self, cfg, reporter: Reporter | None = None, show_progress: bool = True) -> None:
        self.reporter = reporter or NullReporter()
        self.show_progress = show_progress
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
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
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
