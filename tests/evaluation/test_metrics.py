"""COCO AP and log-average miss rate on hand-made detections with known answers."""

from __future__ import annotations

import json
import math

import pytest

from spnas.evaluation import FPPI_POINTS, coco_metrics, log_average_miss_rate


def ground_truth(num_images: int = 10, crowd_image: int | None = None) -> dict:
    gt = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 100, "height": 100}
            for i in range(1, num_images + 1)
        ],
        "categories": [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "rider"}],
        "annotations": [],
    }
    for i in range(1, num_images + 1):
        gt["annotations"].append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [10, 10, 30, 40],
                "area": 1200,
                "iscrowd": 0,
            }
        )
    if crowd_image is not None:
        gt["annotations"].append(
            {
                "id": 1000,
                "image_id": crowd_image,
                "category_id": 1,
                "bbox": [60, 50, 30, 40],
                "area": 1200,
                "iscrowd": 1,
            }
        )
    return gt


def hit(image: int, score: float) -> dict:
    return {"image_id": image, "category_id": 1, "bbox": [10, 10, 30, 40], "score": score}


def false_alarm(image: int, score: float, box=(60, 0, 20, 20)) -> dict:
    return {"image_id": image, "category_id": 1, "bbox": list(box), "score": score}


def test_fppi_points_are_nine_log_spaced() -> None:
    assert len(FPPI_POINTS) == 9
    assert FPPI_POINTS[0] == pytest.approx(0.01) and FPPI_POINTS[-1] == pytest.approx(1.0)


def test_perfect_detector_has_no_misses() -> None:
    lamr = log_average_miss_rate(ground_truth(), [hit(i, 0.9) for i in range(1, 11)], category_id=1)
    assert lamr < 1e-6


def test_no_detection_misses_everything() -> None:
    assert log_average_miss_rate(ground_truth(), [], category_id=1) == 1.0


def test_half_detected_without_false_alarms() -> None:
    lamr = log_average_miss_rate(ground_truth(), [hit(i, 0.9) for i in range(1, 6)], category_id=1)
    assert lamr == pytest.approx(0.5)


def test_confident_false_alarms_first() -> None:
    # Ten false alarms (one per image, score 0.9) come before ten hits (0.5): FPPI reaches 1.0
    # before any hit, so the miss rate is 1 at the eight points below 1.0 and 0 at 1.0:
    # LAMR = exp((8·log 1 + log 1e-10) / 9).
    dets = [false_alarm(i, 0.9) for i in range(1, 11)] + [hit(i, 0.5) for i in range(1, 11)]
    lamr = log_average_miss_rate(ground_truth(), dets, category_id=1)
    assert lamr == pytest.approx(math.exp(math.log(1e-10) / 9))


def test_ignore_regions_absorb_detections() -> None:
    gt = ground_truth(crowd_image=1)
    inside = false_alarm(1, 0.95, box=(60, 50, 30, 40))
    dets = [inside] + [hit(i, 0.9) for i in range(1, 11)]
    assert log_average_miss_rate(gt, dets, category_id=1) < 1e-6
    outside = false_alarm(1, 0.95)
    assert log_average_miss_rate(gt, [outside, *dets[1:]], category_id=1) > 1e-6


def test_mean_over_categories_skips_empty_ones() -> None:
    dets = [hit(i, 0.9) for i in range(1, 6)]
    assert log_average_miss_rate(ground_truth(), dets) == pytest.approx(0.5)


def test_coco_metrics(tmp_path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(ground_truth()))
    perfect = coco_metrics(path, [hit(i, 0.9) for i in range(1, 11)])
    assert perfect["AP"] == pytest.approx(100.0)
    assert perfect["AP-pedestrian"] == pytest.approx(100.0)
    assert math.isnan(perfect["AP-rider"])  # no ground truth for that class
    assert math.isnan(perfect["APl"])  # no large objects
    half = coco_metrics(path, [hit(i, 0.9) for i in range(1, 6)])
    assert 40.0 < half["AP"] < 60.0
    empty = coco_metrics(path, [])
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0
