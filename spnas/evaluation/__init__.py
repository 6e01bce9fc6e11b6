"""Detection metrics shared by the engines: COCO AP (pycocotools) and log-average miss rate.

Both take detections in the COCO results format
(``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) and a ground-truth json, so
every engine reports the same numbers for the same detections.
"""

from __future__ import annotations

from spnas.evaluation.coco import coco_metrics
from spnas.evaluation.lamr import FPPI_POINTS, log_average_miss_rate

__all__ = ["FPPI_POINTS", "coco_metrics", "log_average_miss_rate"]
