"""COCO box AP with pycocotools, reported as detectron2's COCOEvaluator reports it.

Keys: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and ``AP-<class name>``, in percent;
NaN where a size range (or class) has no ground truth.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _load_gt(gt: str | Path | Any) -> Any:
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt))


def coco_metrics(gt: str | Path | Any, detections: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Box AP of ``detections`` against the ground truth ``gt`` (json path or ``COCO``)."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_gt(gt)
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(coco_gt.getCatIds())}
    if not detections:
        # pycocotools cannot load an empty result list; no detection means zero precision.
        metrics = dict.fromkeys(_SUMMARY_KEYS, 0.0)
        metrics.update({f"AP-{name}": 0.0 for name in names.values()})
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(detections)))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {
        key: float(value * 100) if value >= 0 else math.nan
        for key, value in zip(_SUMMARY_KEYS, evaluator.stats[:6], strict=True)
    }
    # precision: [iou thresholds, recall points, classes, area ranges, max dets]
    precision = evaluator.eval["precision"]
    for index, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        metrics[f"AP-{names[cat_id]}"] = float(np.mean(values) * 100) if values.size else math.nan
    return metrics
