"""``spnas train CONFIG``: train an exported network on the full schedule and evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from spnas.cli._json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a detectron2 config (e.g. from `spnas export`) and evaluate it",
        description="Train with SPNASTrainer on the config's schedule, starting from "
        "MODEL.WEIGHTS, on SPNAS.DATA_DIR (or --data), and evaluate on its validation split.",
    )
    parser.add_argument("config", help="detectron2 YAML config")
    parser.add_argument("--data", help="data set directory (default: SPNAS.DATA_DIR)")
    parser.add_argument("--out", help="output directory (default: OUTPUT_DIR)")
    parser.add_argument("--iters", type=int, help="override SOLVER.MAX_ITER")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import sys

    from spnas.data.coco import DatasetSplits
    from spnas.device import resolve_device
    from spnas.engines.base import save_state_dict
    from spnas.engines.detectron2 import SPNASTrainer, get_spnas_cfg
    from spnas.engines.detectron2.data import register_coco_split
    from spnas.exceptions import ConfigError

    cfg = get_spnas_cfg(args.config)
    if args.opts:
        cfg.merge_from_list(args.opts)
    data_dir = args.data or cfg.SPNAS.DATA_DIR
    if not data_dir:
        raise ConfigError(f"{args.config}: SPNAS.DATA_DIR is empty; pass --data DIR")
    splits = DatasetSplits.from_dir(data_dir)
    cfg.DATASETS.TRAIN = (register_coco_split(splits.train_json, splits.image_root),)
    cfg.DATASETS.TEST = (register_coco_split(splits.val_json, splits.image_root),)
    cfg.MODEL.DEVICE = str(resolve_device(args.device))
    if args.iters:
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = tuple(s for s in cfg.SOLVER.STEPS if s < args.iters)
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(args.iters // 5, 1))
    if args.out:
        cfg.OUTPUT_DIR = args.out
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        trainer = SPNASTrainer(cfg)
        trainer.resume_or_load(resume=False)  # starts from MODEL.WEIGHTS
        trainer.train()
    weights = save_state_dict(trainer.model, Path(cfg.OUTPUT_DIR) / "model_trained.pth")
    if args.json:
        print(dumps({"metrics": trainer.last_metrics, "weights": str(weights)}, indent=2))
    else:
        metrics = trainer.last_metrics
        shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("AP", "AP50", "AP75") if k in metrics)
        print(f"trained {cfg.SOLVER.MAX_ITER} iterations: {shown} -> {weights}")
    return 0
