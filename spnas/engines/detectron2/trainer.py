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
  (fast search trials are short and are re-run whole when retried).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from fvcore.common.param_scheduler import CosineParamScheduler

from spnas.engines.base import NullReporter, Reporter
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
        super().__init__(cfg)

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
                distributed=False,
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
        ret.append(ProgressBarHook(f"train {cfg.MODEL.SPNAS.ARCH}", enabled=self.show_progress))
        ret.append(ReporterHook(self.reporter))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate_and_report))
        ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def _evaluate_and_report(self) -> dict[str, Any]:
        started = time.perf_counter()
        results = self.test(self.cfg, self.model)
        self.eval_seconds += time.perf_counter() - started
        self.last_metrics = flatten_metrics(results)
        # Periodic evaluations run after step ``iter``; the last one after training, when
        # ``iter`` has already moved past ``max_iter - 1``.
        self.reporter.evaluation(min(self.iter + 1, self.max_iter), self.last_metrics)
        return results
