"""detectron2 evaluators: COCO AP that scores "no detections" as 0, and the log-average miss
rate (EuroCity Persons' metric)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm

from spnas.evaluation import log_average_miss_rate


class SearchCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator whose AP is 0 (not NaN) when the model detects nothing.

    A barely trained candidate often has no detection above the score threshold; its
    precision is zero, and the search must rank it below every candidate that detects
    something rather than drop it as an invalid (NaN) trial.
    """

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is None:
            results = dict.fromkeys(results, 0.0)
            results.update({f"AP-{name}": 0.0 for name in class_names or ()})
        return results


class LAMREvaluator(DatasetEvaluator):
    """Collects box detections and reports ``{"lamr": {"LAMR": value}}`` (lower is better).

    In a data-parallel run each process sees a shard of the images: the detections are
    gathered in the main process, which reports; the others return ``None`` (as
    ``COCOEvaluator`` does).

    Args:
        dataset_name: a registered COCO-format split (its metadata has ``json_file``).
        category_id: the dataset category to score; ``None`` averages over categories.
    """

    def __init__(self, dataset_name: str, category_id: int | None = None) -> None:
        metadata = MetadataCatalog.get(dataset_name)
        self._json_file = metadata.json_file
        self._category_id = category_id
        contiguous = metadata.thing_dataset_id_to_contiguous_id
        self._dataset_id = {v: k for k, v in contiguous.items()}
        self._results: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._results = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            instances = out["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.numpy()
            for box, score, cls in zip(
                boxes, instances.scores.tolist(), instances.pred_classes.tolist(), strict=True
            ):
                x0, y0, x1, y1 = (float(v) for v in box)
                self._results.append(
                    {
                        "image_id": inp["image_id"],
                        "category_id": self._dataset_id[cls],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score),
                    }
                )

    def evaluate(self) -> OrderedDict | None:
        results = self._results
        if comm.get_world_size() > 1:
            comm.synchronize()
            shards = comm.gather(results, dst=0)
            if not comm.is_main_process():
                return None
            results = [r for shard in shards for r in shard]
        with open(self._json_file, encoding="utf-8") as handle:
            gt = json.load(handle)
        value = log_average_miss_rate(gt, results, self._category_id)
        return OrderedDict(lamr={"LAMR": value})
