from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import spnas.cli
from spnas.data import ECP_CLASSES, ecp_to_coco
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError

W, H = 96, 64
PED, RIDER = 1, 2


def _obj(identity: str, x0: float, y0: float, x1: float, y1: float, *children: Any) -> dict:
    return {
        "identity": identity,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "orient": 90.0,
        "tags": ["occluded>10"],
        "children": list(children),
    }


def _frame(*children: Any) -> dict[str, Any]:
    return {
        "identity": "frame",
        "imagewidth": W,
        "imageheight": H,
        "tags": [],
        "children": list(children),
    }


def _add(ecp: Path, time: str, split: str, stem: str, frame: Any) -> Path:
    city = stem.split("_")[0]
    label = ecp / time / "labels" / split / city / f"{stem}.json"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(json.dumps(frame, indent=1) if not isinstance(frame, str) else frame)
    image = ecp / time / "img" / split / city / f"{stem}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (90, 90, 90)).save(image)
    return label


@pytest.fixture()
def ecp(tmp_path: Path) -> Path:
    root = tmp_path / "ECP"
    _add(
        root,
        "day",
        "train",
        "berlin_00001",
        _frame(
            _obj("pedestrian", 10, 5, 20, 40),
            _obj("rider", 30, 10, 45, 50, _obj("bicycle", 28, 30, 47, 60)),
            _obj("person-group-far-away", 60, 20, 90, 30),
            _obj("rider+vehicle-group-far-away", 0, 50, 10, 60),
            _obj("bicycle-group", 50, 40, 70, 60),
            _obj("pedestrian", 90.5, 10, 101.5, 50),  # overhangs the right edge: clipped
        ),
    )
    _add(root, "day", "train", "berlin_00002", _frame())
    _add(
        root,
        "day",
        "val",
        "amsterdam_00001",
        _frame(_obj("buggy-group", 5, 5, 40, 40, _obj("pedestrian", 6.5, 7.25, 20, 39))),
    )
    return root


def test_convert(ecp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    splits = ecp_to_coco(ecp, out)
    assert splits == DatasetSplits.from_dir(out)

    train = splits.load("train")
    assert train.class_names == ECP_CLASSES == ("pedestrian", "rider")
    assert [img.path.relative_to(out / "images").as_posix() for img in train] == [
        "train/day/berlin/berlin_00001.png",
        "train/day/berlin/berlin_00002.png",
    ]
    first, second = train.images
    assert (first.width, first.height) == (W, H)
    assert first.boxes == (
        (10.0, 5.0, 10.0, 35.0),
        (30.0, 10.0, 15.0, 40.0),  # the rider; its bicycle is skipped
        (60.0, 20.0, 30.0, 10.0),
        (0.0, 50.0, 10.0, 10.0),
        (90.5, 10.0, 5.5, 40.0),  # clipped at x = 96; the bicycle-group is skipped
    )
    assert first.category_ids == (PED, RIDER, PED, RIDER, PED)
    assert first.iscrowd == (0, 0, 1, 1, 0)
    assert second.boxes == ()

    val = splits.load("val")
    assert val.images[0].boxes == ((6.5, 7.25, 13.5, 31.75),)  # found under a buggy-group
    assert val.images[0].category_ids == (PED,)
    assert (out / "images/val/day/amsterdam/amsterdam_00001.png").is_symlink()


def test_day_and_night(ecp: Path, tmp_path: Path) -> None:
    _add(ecp, "night", "train", "berlin_00001", _frame(_obj("rider", 1, 1, 9, 9)))
    _add(ecp, "night", "val", "basel_00001", _frame())
    # The folder holding ECP/ works as the root too.
    splits = ecp_to_coco(ecp.parent, tmp_path / "out", times=("day", "night"), link_images=False)
    train = splits.load("train")
    names = [img.path.relative_to(splits.image_root).as_posix() for img in train]
    assert names[-1] == "train/night/berlin/berlin_00001.png"
    assert [img.id for img in train] == [1, 2, 3]
    assert train.images[-1].category_ids == (RIDER,)
    assert not (splits.image_root / names[-1]).is_symlink()
    assert len(splits.load("val")) == 2


def test_root_may_be_the_time_folder(ecp: Path, tmp_path: Path) -> None:
    splits = ecp_to_coco(ecp / "day", tmp_path / "out", times="day")
    assert len(splits.load("train")) == 2


# --- errors ---------------------------------------------------------------------------------


def test_bad_times(ecp: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"times: .*'dusk'.*expected one or both of"):
        ecp_to_coco(ecp, tmp_path / "out", times=("dusk",))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ECP root .*nowhere.* is not a directory"):
        ecp_to_coco(tmp_path / "nowhere", tmp_path / "out")


def test_missing_time_folder(ecp: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no night folder found.*night/labels"):
        ecp_to_coco(ecp, tmp_path / "out", times="night")


def test_no_label_files(ecp: Path, tmp_path: Path) -> None:
    (ecp / "day/labels/val/amsterdam/amsterdam_00001.json").unlink()
    with pytest.raises(DataError, match=r"day val labels: no JSON files under .*labels/val"):
        ecp_to_coco(ecp, tmp_path / "out")


def test_malformed_json(ecp: Path, tmp_path: Path) -> None:
    _add(ecp, "day", "val", "amsterdam_00001", '{"identity": "frame",\n "children": [,]}')
    with pytest.raises(DataError, match=r"amsterdam_00001\.json.*malformed JSON at line 2 column"):
        ecp_to_coco(ecp, tmp_path / "out")


def test_missing_image(ecp: Path, tmp_path: Path) -> None:
    (ecp / "day/img/train/berlin/berlin_00002.png").unlink()
    with pytest.raises(DataError, match=r"berlin_00002\.json.*image file .*berlin_00002\.png"):
        ecp_to_coco(ecp, tmp_path / "out")


def test_bad_frame(ecp: Path, tmp_path: Path) -> None:
    frame = _frame()
    frame["imagewidth"] = "1920"
    _add(ecp, "day", "val", "amsterdam_00001", frame)
    with pytest.raises(DataError, match=r"amsterdam_00001\.json.*'imagewidth' is '1920'"):
        ecp_to_coco(ecp, tmp_path / "out")
    _add(ecp, "day", "val", "amsterdam_00001", {**_frame(), "identity": "pedestrian"})
    with pytest.raises(DataError, match=r"amsterdam_00001\.json.*expected 'frame'"):
        ecp_to_coco(ecp, tmp_path / "out")


def test_missing_identity_names_the_child_path(ecp: Path, tmp_path: Path) -> None:
    rider = _obj("rider", 30, 10, 45, 50, _obj("bicycle", 28, 30, 47, 60))
    del rider["children"][0]["identity"]
    _add(ecp, "day", "val", "amsterdam_00001", _frame(_obj("pedestrian", 1, 1, 5, 9), rider))
    with pytest.raises(DataError) as info:
        ecp_to_coco(ecp, tmp_path / "out")
    message = str(info.value)
    assert "amsterdam_00001.json" in message
    assert "children[1].children[0]: 'identity' is None" in message


def test_missing_corner(ecp: Path, tmp_path: Path) -> None:
    group = _obj("person-group-far-away", 1, 1, 5, 9)
    del group["y1"]
    _add(ecp, "day", "val", "amsterdam_00001", _frame(_obj("pedestrian", 1, 1, 5, 9), group))
    with pytest.raises(
        DataError,
        match=r"amsterdam_00001\.json.*children\[1\] \('person-group-far-away'\): missing key 'y1'",
    ):
        ecp_to_coco(ecp, tmp_path / "out")


def test_box_outside_image(ecp: Path, tmp_path: Path) -> None:
    outside = _obj("pedestrian", W + 5, 10, W + 20, 50)
    _add(ecp, "day", "val", "amsterdam_00001", _frame(_obj("rider", 1, 1, 5, 9), outside))
    with pytest.raises(DataError) as info:
        ecp_to_coco(ecp, tmp_path / "out")
    message = str(info.value)
    assert "amsterdam_00001.json" in message and "children[1] ('pedestrian')" in message
    assert "box (x0 101, y0 10, x1 116, y1 50) lies outside the 96x64 image" in message


# --- command line ---------------------------------------------------------------------------


def test_cli_ecp2coco(ecp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = spnas.cli.main(["data", "ecp2coco", "--ecp", str(ecp), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert "\n" not in line
    assert "2 train images (5 boxes, 2 ignore), 1 val images (1 boxes, 0 ignore)" in line
    assert "2 classes (pedestrian, rider)" in line and str(out) in line


def test_cli_ecp2coco_error(ecp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = spnas.cli.main(
        ["data", "ecp2coco", "--ecp", str(ecp), "--out", str(tmp_path / "o"), "--time", "night"]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("spnas data: error: ")
    assert "no night folder found" in captured.err and "Traceback" not in captured.err
