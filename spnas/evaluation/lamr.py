"""Log-average miss rate (LAMR), the EuroCity Persons / Caltech pedestrian metric (paper §4).

Miss rate is sampled at nine false-positives-per-image (FPPI) points evenly spaced in log
space over ``[1e-2, 1e0]``; LAMR is their geometric mean. Lower is better. At each point the
miss rate of the most permissive score threshold whose FPPI does not exceed the point is used
(the curve is a step function); a point the detector never reaches counts as miss rate 1.

Matching: detections of one category, by descending score, each to the unmatched ground-truth
box of highest IoU ≥ ``iou_threshold``; ground truth marked ``iscrowd`` (ECP's "ignore" regions)
absorbs detections without counting them as false positives and is never missed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: The nine FPPI reference points.
FPPI_POINTS: np.ndarray = np.logspace(-2.0, 0.0, 9)


def _iou(box: np.ndarray, boxes: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with many; for crowd boxes, intersection over the detection."""
    if boxes.size == 0:
        return np.zeros(0)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = box[2] * box[3]
    union = area + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(crowd, inter / max(area, 1e-12), inter / np.maximum(union, 1e-12))


def _category_lamr(
    gt: Mapping[int, list[tuple[np.ndarray, bool]]],
    dets: Sequence[tuple[int, np.ndarray, float]],
    num_images: int,
    iou_threshold: float,
) -> float:
    num_positives = sum(1 for boxes in gt.values() for _, crowd in boxes if not crowd)
    if num_positives == 0:
        return math.nan
    gt_arrays = {
        image: (
            np.array([b for b, _ in boxes], dtype=float).reshape(-1, 4),
            np.array([c for _, c in boxes], dtype=bool),
        )
        for image, boxes in gt.items()
    }
    used: dict[int, np.ndarray] = {i: np.zeros(len(a[1]), dtype=bool) for i, a in gt_arrays.items()}
    tp: list[int] = []
    fp: list[int] = []
    for image, box, _ in sorted(dets, key=lambda d: -d[2]):
        boxes, crowd = gt_arrays.get(image, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        ious = _iou(box, boxes, crowd)
        candidates = np.where(~crowd & ~used.get(image, np.zeros(0, dtype=bool)))[0]
        best = candidates[np.argmax(ious[candidates])] if candidates.size else None
        if best is not None and ious[best] >= iou_threshold:
            used[image][best] = True
            tp.append(1)
            fp.append(0)
        elif crowd.any() and ious[crowd].max() >= iou_threshold:
            continue  # inside an ignore region: neither a hit nor a false alarm
        else:
            tp.append(0)
            fp.append(1)
    if not tp:
        return 1.0
    fppi = np.cumsum(fp) / max(num_images, 1)
    miss_rate = 1.0 - np.cumsum(tp) / num_positives
    samples = []
    for point in FPPI_POINTS:
        reached = np.where(fppi <= point)[0]
        samples.append(miss_rate[reached[-1]] if reached.size else 1.0)
    return float(np.exp(np.mean(np.log(np.maximum(samples, 1e-10)))))


def log_average_miss_rate(
    gt: Mapping[str, Any],
    detections: Iterable[Mapping[str, Any]],
    category_id: int | None = None,
    iou_threshold: float = 0.5,
) -> float:
    """LAMR of ``detections`` against the COCO ground truth ``gt`` (a loaded json dict).

    Args:
        gt: COCO ground truth with ``images``, ``annotations``, ``categories``.
        detections: COCO results.
        category_id: the category to score; ``None`` averages over categories that have
            ground truth.
        iou_threshold: IoU for a hit (0.5 in ECP and Caltech).
    """
    num_images = len(gt["images"])
    gt_by_cat: dict[int, dict[int, list[tuple[np.ndarray, bool]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for ann in gt["annotations"]:
        gt_by_cat[ann["category_id"]][ann["image_id"]].append(
            (np.asarray(ann["bbox"], dtype=float), bool(ann.get("iscrowd", 0)))
        )
    dets_by_cat: dict[int, list[tuple[int, np.ndarray, float]]] = defaultdict(list)
    for det in detections:
        dets_by_cat[det["category_id"]].append(
            (det["image_id"], np.asarray(det["bbox"], dtype=float), float(det["score"]))
        )
    categories = [category_id] if category_id is not None else sorted(gt_by_cat)
    values = [
        _category_lamr(gt_by_cat[c], dets_by_cat[c], num_images, iou_threshold) for c in categories
    ]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan
