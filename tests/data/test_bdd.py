from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import spnas.cli
from spnas.data import BDD_CLASSES, bdd_to_coco
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError

W, H = 128, 72


def _box(category: str, x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
    return {
        "category": category,
        "attributes": {"occluded": False, "truncated": False, "trafficLightColor": "none"},
        "manualShape": True,
        "manualAttributes": True,
        "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
        "id": 0,
    }


def _poly(category: str) -> dict[str, Any]:
    return {
        "category": category,
        "attributes": {"laneDirection": "parallel", "laneStyle": "solid", "laneType": "road curb"},
        "poly2d": [{"vertices": [[0.0, 50.0], [60.0, 40.0]], "types": "LL", "closed": False}],
        "id": 7,
    }


def _frame(name: str, labels: list[dict[str, Any]] | None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "name": name,
        "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
        "timestamp": 10000,
    }
    if labels is not None:
        frame["labels"] = labels
    return frame


TRAIN = [
    _frame(
        "a.jpg",
        [
            # y2 overhangs the 72 px image by 0.5 px, within the tolerance: clipped.
            _box("car", 10.5, 20.25, 100.5, 72.5),
            _box("person", 0.0, 0.0, 5.0, 12.0),
            _poly("lane"),
            _poly("drivable area"),
        ],
    ),
    _frame("b.jpg", None),  # a frame with no labels at all
]
VAL = [_frame("c.jpg", [_box("traffic light", 50.0, 5.0, 56.0, 17.5), _poly("lane")])]


def _write(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


@pytest.fixture()
def bdd(tmp_path: Path) -> Path:
    """A ``bdd100k`` folder in the standard layout, under ``tmp_path/release``."""
    root = tmp_path / "release" / "bdd100k"
    for split, frames in (("train", TRAIN), ("val", VAL)):
        _write(root / "labels" / f"bdd100k_labels_images_{split}.json", frames)
        images = root / "images" / "100k" / split
        images.mkdir(parents=True)
        for frame in frames:
            Image.new("RGB", (W, H), (30, 60, 90)).save(images / frame["name"])
    return root


def _paths(root: Path) -> dict[str, Path]:
    return {
        "labels_train": root / "labels/bdd100k_labels_images_train.json",
        "labels_val": root / "labels/bdd100k_labels_images_val.json",
        "images_train": root / "images/100k/train",
        "images_val": root / "images/100k/val",
    }


def test_convert(bdd: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    splits = bdd_to_coco(None, out, **_paths(bdd))
    assert splits == DatasetSplits.from_dir(out)

    train = splits.load("train")
    assert train.class_names == BDD_CLASSES
    assert [img.path.relative_to(out / "images").as_posix() for img in train] == [
        "train/a.jpg",
        "train/b.jpg",
    ]
    a, b = train.images
    assert (a.id, a.width, a.height) == (1, W, H)  # read from the image, not 1280x720
    # Lane and drivable-area labels (poly2d, no box2d) are skipped.
    assert a.boxes == ((10.5, 20.25, 90.0, 51.75), (0.0, 0.0, 5.0, 12.0))
    assert a.category_ids == (3, 1)
    assert a.iscrowd == (0, 0)
    assert b.boxes == ()

    val = splits.load("val")
    assert val.images[0].boxes == ((50.0, 5.0, 6.0, 12.5),)
    assert val.images[0].category_ids == (BDD_CLASSES.index("traffic light") + 1,)

    raw = json.loads((out / "train.json").read_text())
    assert [a["id"] for a in raw["annotations"]] == [1, 2]
    assert raw["annotations"][0]["bbox"] == [10.5, 20.25, 90.0, 51.75]  # clipped when written


def test_root_layout_and_overrides(bdd: Path, tmp_path: Path) -> None:
    # The folder holding bdd100k/ works; an explicit path overrides the layout.
    other = _write(tmp_path / "other_val.json", [_frame("c.jpg", [])])
    splits = bdd_to_coco(bdd.parent, tmp_path / "out", labels_val=other, link_images=False)
    assert len(splits.load("train")) == 2
    assert splits.load("val").num_annotations == 0
    copied = splits.image_root / "val/c.jpg"
    assert copied.is_file() and not copied.is_symlink()


def test_assumed_size(bdd: Path, tmp_path: Path) -> None:
    splits = bdd_to_coco(bdd, tmp_path / "out", read_sizes=False)
    image = splits.load("train").images[0]
    assert (image.width, image.height) == (1280, 720)
    assert image.boxes[0] == (10.5, 20.25, 90.0, 52.25)  # not clipped at 720


# --- errors ---------------------------------------------------------------------------------


def test_nothing_to_find_files_in(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train split.*--labels-train.*--bdd"):
        bdd_to_coco(None, tmp_path / "out")


def test_missing_label_file(bdd: Path, tmp_path: Path) -> None:
    (bdd / "labels/bdd100k_labels_images_val.json").unlink()
    with pytest.raises(DataError, match=r"val label file .*bdd100k_labels_images_val\.json"):
        bdd_to_coco(bdd, tmp_path / "out")


def test_missing_image_folder(bdd: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train image folder .*nowhere.* does not exist"):
        bdd_to_coco(bdd, tmp_path / "out", images_train=tmp_path / "nowhere")


def test_malformed_json(bdd: Path, tmp_path: Path) -> None:
    labels = bdd / "labels/bdd100k_labels_images_train.json"
    labels.write_text('[\n {"name": "a.jpg",\n  "labels": [}\n]\n')
    with pytest.raises(DataError, match=r"bdd100k_labels_images_train\.json.*line 3 column"):
        bdd_to_coco(bdd, tmp_path / "out")


def test_not_a_list_of_frames(bdd: Path, tmp_path: Path) -> None:
    _write(bdd / "labels/bdd100k_labels_images_train.json", {"frames": []})
    with pytest.raises(DataError, match=r"train\.json.*expected a list of frames"):
        bdd_to_coco(bdd, tmp_path / "out")


def test_frame_without_name(bdd: Path, tmp_path: Path) -> None:
    _write(bdd / "labels/bdd100k_labels_images_val.json", [{"labels": []}])
    with pytest.raises(DataError, match=r"val\.json.*frames\[0\]: 'name' is None"):
        bdd_to_coco(bdd, tmp_path / "out")


def test_missing_image(bdd: Path, tmp_path: Path) -> None:
    (bdd / "images/100k/train/b.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.json.*frames\[1\] \('b\.jpg'\): image file"):
        bdd_to_coco(bdd, tmp_path / "out")


def test_unknown_category(bdd: Path, tmp_path: Path) -> None:
    frames = [_frame("c.jpg", [_poly("lane"), _box("pedestrian", 1, 1, 5, 5)])]
    _write(bdd / "labels/bdd100k_labels_images_val.json", frames)
    with pytest.raises(DataError) as info:
        bdd_to_coco(bdd, tmp_path / "out")
    message = str(info.value)
    assert "bdd100k_labels_images_val.json" in message
    assert "frames[0] ('c.jpg'): labels[1]" in message
    assert "'pedestrian'" in message and "expected one of" in message


def test_box_outside_image(bdd: Path, tmp_path: Path) -> None:
    frames = [_frame("c.jpg", [_box("car", 1, 1, 5, 5), _box("bus", 100, 10, W + 5, 20)])]
    _write(bdd / "labels/bdd100k_labels_images_val.json", frames)
    with pytest.raises(DataError) as info:
        bdd_to_coco(bdd, tmp_path / "out")
    message = str(info.value)
    assert "val.json" in message and "frames[0] ('c.jpg'): labels[1] ('bus')" in message
    assert "box2d (x1 100, y1 10, x2 133, y2 20) lies outside the 128x72 image" in message


@pytest.mark.parametrize(
    ("box2d", "expected"),
    [
        ({"x1": 1, "y1": 1, "x2": 5}, r"'box2d' has no 'y2'"),
        ({"x1": 1, "y1": 1, "x2": "5", "y2": 5}, r"'x2' is '5', expected a finite number"),
        ({"x1": 5, "y1": 1, "x2": 5, "y2": 5}, r"x1 <= x0 or y1 <= y0"),
        ([1, 1, 5, 5], r"'box2d' is \[1, 1, 5, 5\]"),
    ],
)
def test_malformed_box(bdd: Path, tmp_path: Path, box2d: Any, expected: str) -> None:
    label = _box("car", 0, 0, 1, 1)
    label["box2d"] = box2d
    _write(bdd / "labels/bdd100k_labels_images_val.json", [_frame("c.jpg", [label])])
    with pytest.raises(DataError, match=r"val\.json.*frames\[0\] \('c\.jpg'\): labels\[0\]"):
        bdd_to_coco(bdd, tmp_path / "out")
    with pytest.raises(DataError, match=expected):
        bdd_to_coco(bdd, tmp_path / "out")


def test_duplicate_frame(bdd: Path, tmp_path: Path) -> None:
    _write(
        bdd / "labels/bdd100k_labels_images_val.json", [_frame("c.jpg", []), _frame("c.jpg", [])]
    )
    with pytest.raises(DataError, match=r"frames\[1\] \('c\.jpg'\).*already added.*frames\[0\]"):
        bdd_to_coco(bdd, tmp_path / "out")


# --- command line ---------------------------------------------------------------------------


def test_cli_bdd2coco(bdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    paths = _paths(bdd)
    code = spnas.cli.main(
        [
            "data",
            "bdd2coco",
            "--labels-train",
            str(paths["labels_train"]),
            "--labels-val",
            str(paths["labels_val"]),
            "--images-train",
            str(paths["images_train"]),
            "--images-val",
            str(paths["images_val"]),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert "\n" not in line
    assert "2 train images (2 boxes, 0 ignore), 1 val images (1 boxes, 0 ignore)" in line
    assert "10 classes" in line and str(out) in line
    assert DatasetSplits.from_dir(out).load("val").num_annotations == 1


def test_cli_bdd2coco_root(bdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = spnas.cli.main(["data", "bdd2coco", "--bdd", str(bdd), "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err


def test_cli_bdd2coco_error(bdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bdd / "images/100k/val/c.jpg").unlink()
    code = spnas.cli.main(["data", "bdd2coco", "--bdd", str(bdd), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("spnas data: error: ")
    assert "frames[0] ('c.jpg')" in captured.err and "Traceback" not in captured.err
