"""COCO evaluation of a torchvision detector on a validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN

from spnas.data.coco import CocoDataset
from spnas.data.torch_dataset import DetectionDataset, collate
from spnas.engines._types import DataSpec
from spnas.evaluation import coco_metrics, log_average_miss_rate

__all__ = ["EVAL_BATCH", "evaluate_detector"]

#: Images per forward pass during evaluation (no gradients, so larger than training's).
EVAL_BATCH = 8


@torch.no_grad()
def evaluate_detector(
    model: FasterRCNN,
    val_set: CocoDataset,
    data: DataSpec,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, float]:
    """COCO AP (and LAMR when it is the metric) of ``model`` on ``val_set``.

    Leaves ``model`` in eval mode.
    """
    model.eval()
    dataset = DetectionDataset(val_set, train=False)
    loader = DataLoader(
        dataset,
        batch_size=EVAL_BATCH,
        num_workers=num_workers,
        collate_fn=collate,
        # A loader draws its workers' base seed from its generator; a private one keeps
        # evaluation from consuming the training's random stream, so evaluating every
        # eval_period iterations does not change what is trained.
        generator=torch.Generator(),
    )
    results: list[dict[str, Any]] = []
    for images, targets in loader:
        outputs = model([image.to(device) for image in images])
        # Boxes come back in the original image's pixels (the transform undoes resizing).
        for target, output in zip(targets, outputs, strict=True):
            results.extend(_detections(dataset, target["image_id"], output))
    metrics = coco_metrics(data.splits.val_json, results)
    if data.metric == "LAMR":
        gt = json.loads(Path(data.splits.val_json).read_text(encoding="utf-8"))
        metrics["LAMR"] = log_average_miss_rate(gt, results, data.lamr_category)
    return metrics


def _detections(
    dataset: DetectionDataset, image_id: int, output: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """One image's detections as COCO result entries (boxes in ``xywh``)."""
    boxes = output["boxes"].cpu()
    boxes[:, 2:] -= boxes[:, :2]  # xyxy → xywh
    return [
        {
            "image_id": image_id,
            "category_id": dataset.category_id(label),
            "bbox": box,
            "score": score,
        }
        for box, score, label in zip(
            boxes.tolist(),
            output["scores"].cpu().tolist(),
            output["labels"].cpu().tolist(),
            strict=True,
        )
    ]
