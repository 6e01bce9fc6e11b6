from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from spnas.data.coco import BOX_TOLERANCE_PX, DatasetSplits, load_coco
from spnas.exceptions import DataError

W, H = 32, 24

VALID: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "train/a.png", "width": W, "height": H},
        {"id": 2, "file_name": "train/b.png", "width": W, "height": H},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.5, 0, 4, 4], "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 10, 12, 14]},
    ],
    # Listed out of id order: the loader sorts them.
    "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "ant"}],
}


def _dataset(root: Path, payload: Any = None, *, flat: bool = False) -> Path:
    """Write ``payload`` (default :data:`VALID`) as ``root/train.json`` with its images."""
    payload = copy.deepcopy(VALID) if payload is None else payload
    image_root = root if flat else root / "images"
    for name in ("a.png", "b.png"):
        (image_root / "train").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(image_root / "train" / name)
    path = root / "train.json"
    path.write_text(json.dumps(payload, indent=1) if not isinstance(payload, str) else payload)
    return path


def _broken(tmp_path: Path, edit: Any) -> Path:
    payload = copy.deepcopy(VALID)
    edit(payload)
    return _dataset(tmp_path, payload)


def _error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load_coco(path, **kwargs)
    return str(info.value)


def test_valid(tmp_path: Path) -> None:
    dataset = load_coco(_dataset(tmp_path))
    assert dataset.image_root == tmp_path / "images"
    assert dataset.category_ids == (1, 3)
    assert dataset.class_names == ("ant", "cat")
    assert dataset.contiguous_label() == {1: 0, 3: 1}
    assert len(dataset) == 2 and dataset.num_annotations == 3
    a, b = dataset
    assert a.path == tmp_path / "images/train/a.png"
    assert a.boxes == ((1.0, 2.0, 10.0, 5.0), (0.5, 0.0, 4.0, 4.0))
    assert a.category_ids == (3, 1)
    assert a.iscrowd == (0, 1)
    assert b.iscrowd == (0,)  # absent means 0


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = _dataset(tmp_path, '{\n  "images": [],\n  "annotations": [,]\n}')
    message = _error(path)
    assert str(path) in message
    assert "malformed JSON at line 3 column 19" in message


def test_missing_annotation_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.json")


def test_top_level_not_an_object(tmp_path: Path) -> None:
    assert "expected a JSON object, got list" in _error(_dataset(tmp_path, []))


def test_missing_section(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d.pop("annotations")))
    assert "missing list 'annotations'" in message and "train.json" in message


def test_empty_categories(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d.update(categories=[])))
    assert "'categories' is empty" in message


def test_missing_image_file(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    (tmp_path / "images/train/b.png").unlink()
    message = _error(path)
    assert "train.json" in message and "images[1] (id 2)" in message
    assert "image file 'train/b.png' not found" in message
    # ... which check_images=False lets through.
    assert len(load_coco(path, check_images=False)) == 2


def test_box_outside_image(tmp_path: Path) -> None:
    path = _broken(tmp_path, lambda d: d["annotations"][2].update(bbox=[20, 10, 14, 14]))
    message = _error(path)
    assert "train.json" in message and "annotations[2] (id 3)" in message
    assert "outside its 32x24 image 'b.png'" in message


def test_box_within_tolerance_is_clipped(tmp_path: Path) -> None:
    tol = BOX_TOLERANCE_PX

    def edit(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"] = [-tol, -0.5, 10, 5]
        d["annotations"][2]["bbox"] = [20, 10, 12 + tol, 14 + tol]

    a, b = load_coco(_broken(tmp_path, edit)).images
    assert a.boxes[0] == (0.0, 0.0, 10 - tol, 4.5)
    assert b.boxes[0] == (20.0, 10.0, 12.0, 14.0)


def test_non_positive_box(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["annotations"][1].update(bbox=[1, 1, 0, 4])))
    assert "annotations[1] (id 2)" in message and "non-positive width or height" in message


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], [1, 2, True, 4]])
def test_malformed_bbox(tmp_path: Path, bbox: list[Any]) -> None:
    message = _error(_broken(tmp_path, lambda d: d["annotations"][0].update(bbox=bbox)))
    assert "annotations[0] (id 1)" in message and "expected [x, y, width, height]" in message


def test_unknown_category_id(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["annotations"][2].update(category_id=2)))
    assert "annotations[2] (id 3)" in message
    assert "category_id 2 is unknown, expected one of [1, 3]" in message


def test_unknown_image_id(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["annotations"][1].update(image_id=9)))
    assert "annotations[1] (id 2)" in message and "image_id 9 is not among" in message


def test_duplicate_image_id(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["images"][1].update(id=1)))
    assert "images[1]: duplicate image id 1" in message


def test_duplicate_category_id(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["categories"][1].update(id=3)))
    assert "categories[1]: duplicate category id 3" in message


@pytest.mark.parametrize(
    ("section", "index", "key", "record"),
    [
        ("images", 1, "width", "images[1]"),
        ("images", 0, "file_name", "images[0]"),
        ("annotations", 2, "bbox", "annotations[2] (id 3)"),
        ("annotations", 0, "image_id", "annotations[0] (id 1)"),
        ("categories", 0, "name", "categories[0]"),
    ],
)
def test_missing_key(tmp_path: Path, section: str, index: int, key: str, record: str) -> None:
    message = _error(_broken(tmp_path, lambda d: d[section][index].pop(key)))
    assert "train.json" in message and f"{record}: missing key {key!r}" in message


@pytest.mark.parametrize(
    ("section", "index", "key", "value", "expected"),
    [
        ("images", 0, "width", "32", "images[0]: 'width' is '32', expected int"),
        ("images", 1, "id", True, "images[1]: 'id' is True, expected int"),
        ("images", 0, "file_name", 7, "images[0]: 'file_name' is 7, expected str"),
        ("annotations", 1, "category_id", 1.0, "(id 2): 'category_id' is 1.0, expected int"),
        ("categories", 1, "id", "1", "categories[1]: 'id' is '1', expected int"),
    ],
)
def test_wrong_type(
    tmp_path: Path, section: str, index: int, key: str, value: Any, expected: str
) -> None:
    message = _error(_broken(tmp_path, lambda d: d[section][index].update({key: value})))
    assert expected in message


def test_record_not_an_object(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["images"].append([3, "c.png"])))
    assert "images[2]: expected an object, got list" in message


def test_non_positive_image_size(tmp_path: Path) -> None:
    message = _error(_broken(tmp_path, lambda d: d["images"][0].update(height=0)))
    assert "images[0] (id 1): size 32x0" in message


def test_image_root_default_and_explicit(tmp_path: Path) -> None:
    flat = _dataset(tmp_path / "flat", flat=True)
    assert load_coco(flat).image_root == tmp_path / "flat"
    nested = _dataset(tmp_path / "nested")
    assert load_coco(nested).image_root == tmp_path / "nested/images"
    # An explicit root wins.
    assert "not found under" in _error(nested, image_root=tmp_path / "flat/train")


# --- DatasetSplits --------------------------------------------------------------------------


def test_splits_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data set directory .*nowhere.* does not exist"):
        DatasetSplits.from_dir(tmp_path / "nowhere")


def test_splits_missing_val_json(tmp_path: Path) -> None:
    _dataset(tmp_path)
    with pytest.raises(DataError, match=r"has no val\.json: expected train\.json and val\.json"):
        DatasetSplits.from_dir(tmp_path)


@pytest.mark.parametrize("flat", [False, True])
def test_splits_image_root(tmp_path: Path, flat: bool) -> None:
    train = _dataset(tmp_path, flat=flat)
    (tmp_path / "val.json").write_text(train.read_text())
    splits = DatasetSplits.from_dir(tmp_path)
    assert splits.train_json == train and splits.val_json == tmp_path / "val.json"
    assert splits.image_root == (tmp_path if flat else tmp_path / "images")
    assert len(splits.load("train")) == len(splits.load("val")) == 2
    with pytest.raises(DataError, match=r"split 'test': expected 'train' or 'val'"):
        splits.load("test")
