"""Full training of a detectron2 config in one process of a (possibly distributed) run: what
``spnas train`` launches, one process per GPU, as detectron2's ``tools/train_net.py`` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from spnas.data.coco import DatasetSplits
from spnas.engines.base import save_state_dict
from spnas.engines.detectron2.data import register_coco_split
from spnas.engines.detectron2.trainer import SPNASTrainer
from spnas.engines.distributed import is_main_process, unwrap

__all__ = ["train_net"]


def train_net(cfg: CfgNode, resume: bool = False, allow_pickle: bool = False) -> dict[str, Any]:
    """Train ``cfg`` on ``SPNAS.DATA_DIR`` and evaluate it on its validation split.

    Registers the data set's splits in this process (catalog entries live in the process
    that registers them), starts from ``MODEL.WEIGHTS`` — or, with ``resume``, from the last
    checkpoint in ``OUTPUT_DIR`` — and writes ``OUTPUT_DIR/model_trained.pth`` from the main
    process. Both are read without running code; ``allow_pickle`` (``--allow-pickle``) lets
    ``MODEL.WEIGHTS``, and only it, be a ``.pkl`` read with :mod:`pickle`. ``SOLVER.IMS_PER_BATCH`` is the total batch over all processes, scaled by
    ``SOLVER.REFERENCE_WORLD_SIZE`` when that is set (detectron2's ``auto_scale_workers``).

    Returns:
        ``{"metrics": {...}, "weights": path, "iterations": n}`` (metrics empty outside
        the main process).
    """
    cfg = cfg.clone()
    splits = DatasetSplits.from_dir(cfg.SPNAS.DATA_DIR)
    cfg.DATASETS.TRAIN = (register_coco_split(splits.train_json, splits.image_root),)
    cfg.DATASETS.TEST = (register_coco_split(splits.val_json, splits.image_root),)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    trainer = SPNASTrainer(cfg)
    trainer.checkpointer.trusted_pickle = cfg.MODEL.WEIGHTS if allow_pickle else ""
    trainer.resume_or_load(resume=resume)
    trainer.train()
    weights = Path(cfg.OUTPUT_DIR) / "model_trained.pth"
    if is_main_process():
        save_state_dict(unwrap(trainer.model), weights)
    return {
        "metrics": dict(trainer.last_metrics),
        "weights": str(weights),
        "iterations": trainer.cfg.SOLVER.MAX_ITER,
    }
