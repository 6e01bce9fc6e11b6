"""``spnas infer CONFIG WEIGHTS IMAGE… --out DIR``: draw a detector's boxes on images."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run an exported detector on images and write them with boxes drawn",
        description="Predict boxes with a detectron2 config (e.g. from `spnas export`) and "
        "write each image as PNG with its boxes, classes and scores drawn.",
    )
    parser.add_argument("config", help="detectron2 YAML config")
    parser.add_argument("weights", help="detector weights (.pth)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--score", type=float, default=0.5, help="minimum score to draw")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let WEIGHTS be a pickle (.pkl) file; pickles can run code: only for files you trust",
    )
    parser.set_defaults(func=run)


def draw(image, boxes, labels, scores, names):  # type: ignore[no-untyped-def]
    """``image`` (PIL) with boxes and ``name score`` captions drawn."""
    from PIL import ImageDraw

    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]
    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    for box, label, score in zip(boxes, labels, scores, strict=True):
        colour = palette[label % len(palette)]
        x0, y0, x1, y1 = (float(v) for v in box)
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        name = names[label] if label < len(names) else str(label)
        pen.text((x0 + 2, max(y0 - 11, 0)), f"{name} {score:.2f}", fill=colour)
    return canvas


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from spnas.device import resolve_device
    from spnas.engines.detectron2 import check_model_weights, get_spnas_cfg
    from spnas.exceptions import DataError

    cfg = get_spnas_cfg(args.config)
    cfg.MODEL.WEIGHTS = str(Path(args.weights).resolve())
    # A missing, foreign or pickled file fails here, naming it.
    check_model_weights(cfg, allow_pickle=args.allow_pickle)
    cfg.MODEL.DEVICE = str(resolve_device(args.device))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score
    classes_file = Path(args.config).with_name("classes.json")
    names = json.loads(classes_file.read_text()) if classes_file.is_file() else []

    from detectron2.engine import DefaultPredictor

    from spnas.engines.detectron2.checkpoint import AtomicCheckpointer

    # DefaultPredictor would read MODEL.WEIGHTS with detectron2's loader (pickle for .pkl):
    # it gets none (and its "initializing from scratch" is muted), and spnas's loader, which
    # runs no code, reads the weights.
    weights, cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS, ""
    fvcore_logger = logging.getLogger("fvcore.common.checkpoint")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.WARNING)
    try:
        predictor = DefaultPredictor(cfg)
    finally:
        fvcore_logger.setLevel(level)
    checkpointer = AtomicCheckpointer(predictor.model)
    checkpointer.trusted_pickle = weights if args.allow_pickle else ""
    checkpointer.load(weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.images):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as exc:
            raise DataError(f"image {str(path)!r} could not be read: {exc}") from exc
        # DefaultPredictor takes BGR arrays and converts to cfg.INPUT.FORMAT itself.
        instances = predictor(np.asarray(image)[:, :, ::-1])["instances"].to("cpu")
        drawn = draw(
            image,
            instances.pred_boxes.tensor.tolist(),
            instances.pred_classes.tolist(),
            instances.scores.tolist(),
            names,
        )
        target = out / f"{path.stem}.png"
        drawn.save(target)
        print(f"{path}: {len(instances)} box(es) -> {target}")
    return 0
