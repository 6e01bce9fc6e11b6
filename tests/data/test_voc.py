from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import spnas.cli
from spnas.data import VOC_CLASSES, parse_voc_sets, voc_to_coco
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError

# (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)
Obj = tuple[str, tuple[float, float, float, float], int]

W, H = 40, 30


def _xml(objects: list[Obj], size: tuple[int, int] | None = (W, H)) -> str:
    parts = ["<annotation>", "  <folder>VOC</folder>", "  <filename>x.jpg</filename>"]
    if size is not None:
        parts.append(
            f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        )
    for name, (x0, y0, x1, y1), difficult in objects:
        parts += [
            "  <object>",
            f"    <name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>",
            f"    <difficult>{difficult}</difficult>",
            f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _add_year(
    devkit: Path,
    year: str,
    images: dict[str, list[Obj]],
    sets: dict[str, list[str]],
    sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    year_dir = devkit / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        size = (sizes or {}).get(image_id, (W, H))
        Image.new("RGB", size, (120, 80, 40)).save(year_dir / "JPEGImages" / f"{image_id}.jpg")
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(_xml(objects, size))
    for set_name, ids in sets.items():
        (year_dir / "ImageSets" / "Main" / f"{set_name}.txt").write_text("\n".join(ids) + "\n")
    return year_dir


@pytest.fixture()
def devkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    _add_year(
        root,
        "2007",
        {
            "000001": [("dog", (1, 1, 20, 10), 0), ("person", (5, 6, 40, 30), 1)],
            "000002": [("car", (10, 11, 25, 28), 0)],
            "000003": [("bicycle", (2, 3, 4, 5), 0), ("chair", (1, 1, 40, 30), 1)],
        },
        {"trainval": ["000001", "000002"], "test": ["000003"]},
    )
    return root


def _cat(name: str) -> int:
    return VOC_CLASSES.index(name) + 1


def test_voc07_boxes_are_converted_from_one_based_inclusive(devkit: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    splits = voc_to_coco(devkit, out)
    assert splits == DatasetSplits.from_dir(out)
    assert splits.image_root == out / "images"

    train = splits.load("train")
    assert [img.path.relative_to(out / "images").as_posix() for img in train] == [
        "train/VOC2007/000001.jpg",
        "train/VOC2007/000002.jpg",
    ]
    assert train.class_names == VOC_CLASSES
    assert train.category_ids == tuple(range(1, 21))
    first, second = train.images
    assert (first.id, first.width, first.height) == (1, W, H)
    # (1, 1, 20, 10) → x = 0, w = 20: the box covers pixels 0..19.
    assert first.boxes == ((0.0, 0.0, 20.0, 10.0), (4.0, 5.0, 36.0, 25.0))
    assert first.category_ids == (_cat("dog"), _cat("person"))
    assert first.iscrowd == (0, 1)  # difficult → ignore region
    assert second.boxes == ((9.0, 10.0, 16.0, 18.0),)
    assert second.category_ids == (_cat("car"),)

    val = splits.load("val")
    assert len(val) == 1
    assert val.images[0].boxes == ((1.0, 2.0, 3.0, 3.0), (0.0, 0.0, 40.0, 30.0))
    assert val.images[0].iscrowd == (0, 1)

    raw = json.loads((out / "train.json").read_text())
    assert [a["id"] for a in raw["annotations"]] == [1, 2, 3]
    assert raw["annotations"][0]["area"] == 200
    # Images are absolute symlinks to the devkit by default.
    linked = out / "images/train/VOC2007/000001.jpg"
    assert linked.is_symlink()
    assert linked.resolve() == (devkit / "VOC2007/JPEGImages/000001.jpg").resolve()


def test_use_difficult_keeps_them_as_ordinary_boxes(devkit: Path, tmp_path: Path) -> None:
    splits = voc_to_coco(devkit, tmp_path / "out", use_difficult=True)
    assert splits.load("train").images[0].iscrowd == (0, 0)


def test_copy_images(devkit: Path, tmp_path: Path) -> None:
    splits = voc_to_coco(devkit, tmp_path / "out", link_images=False)
    copied = splits.image_root / "val/VOC2007/000003.jpg"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == (devkit / "VOC2007/JPEGImages/000003.jpg").read_bytes()


def test_voc07_plus_12_keeps_names_unique_across_years(devkit: Path, tmp_path: Path) -> None:
    _add_year(
        devkit,
        "2012",
        {"000001": [("cat", (3, 3, 30, 20), 0)]},  # same id as a 2007 image
        {"trainval": ["000001"]},
        sizes={"000001": (50, 40)},
    )
    splits = voc_to_coco(
        devkit.parent,  # the folder holding VOCdevkit works as well
        tmp_path / "out",
        train_sets=parse_voc_sets("2007:trainval,2012:trainval"),
    )
    train = splits.load("train")
    names = [img.path.relative_to(splits.image_root).as_posix() for img in train]
    assert names == [
        "train/VOC2007/000001.jpg",
        "train/VOC2007/000002.jpg",
        "train/VOC2012/000001.jpg",
    ]
    assert [img.id for img in train] == [1, 2, 3]
    assert (train.images[2].width, train.images[2].height) == (50, 40)
    assert train.images[2].boxes == ((2.0, 2.0, 28.0, 18.0),)


def test_root_may_be_the_year_folder(devkit: Path, tmp_path: Path) -> None:
    splits = voc_to_coco(devkit / "VOC2007", tmp_path / "out")
    assert len(splits.load("train")) == 2


def test_a_year_folder_does_not_serve_another_year(devkit: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no VOC2012 folder found"):
        voc_to_coco(
            devkit / "VOC2007",
            tmp_path / "out",
            train_sets=(("2012", "trainval"),),
            val_sets=(("2012", "val"),),
        )
    # A year folder under another name serves the one year asked for.
    renamed = (devkit / "VOC2007").rename(tmp_path / "pascal07")
    splits = voc_to_coco(renamed, tmp_path / "out")
    assert len(splits.load("val")) == 1


def test_size_is_read_from_the_image_when_the_xml_has_none(devkit: Path, tmp_path: Path) -> None:
    xml = devkit / "VOC2007/Annotations/000002.xml"
    xml.write_text(_xml([("car", (10, 11, 25, 28), 0)], size=None))
    train = voc_to_coco(devkit, tmp_path / "out").load("train")
    assert (train.images[1].width, train.images[1].height) == (W, H)


def test_duplicate_ids_within_a_split_are_merged(devkit: Path, tmp_path: Path) -> None:
    (devkit / "VOC2007/ImageSets/Main/train.txt").write_text("000001\n")
    splits = voc_to_coco(
        devkit, tmp_path / "out", train_sets=(("2007", "trainval"), ("2007", "train"))
    )
    assert len(splits.load("train")) == 2


def test_parse_voc_sets() -> None:
    assert parse_voc_sets("2007:trainval, 2012:trainval") == (
        ("2007", "trainval"),
        ("2012", "trainval"),
    )
    with pytest.raises(DataError, match=r"'2007' is not YEAR:SET"):
        parse_voc_sets("2007")


# --- errors ---------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        voc_to_coco(tmp_path / "nowhere", tmp_path / "out")


def test_missing_year_folder(devkit: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no VOC2012 folder found.*VOC2012/Annotations"):
        voc_to_coco(devkit, tmp_path / "out", train_sets=(("2012", "trainval"),))


def test_missing_images_folder(devkit: Path, tmp_path: Path) -> None:
    (devkit / "VOC2007/JPEGImages/000001.jpg").unlink()
    (devkit / "VOC2007/JPEGImages/000002.jpg").unlink()
    (devkit / "VOC2007/JPEGImages/000003.jpg").unlink()
    (devkit / "VOC2007/JPEGImages").rmdir()
    with pytest.raises(DataError, match=r"VOC2007.*has no JPEGImages/"):
        voc_to_coco(devkit, tmp_path / "out")


def test_missing_list_file(devkit: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        voc_to_coco(devkit, tmp_path / "out", val_sets=(("2007", "val"),))
    message = str(info.value)
    assert "ImageSets/Main/val.txt" in message and "does not exist" in message
    assert "['test', 'trainval']" in message


def test_malformed_xml_names_file_and_line(devkit: Path, tmp_path: Path) -> None:
    xml = devkit / "VOC2007/Annotations/000002.xml"
    xml.write_text("<annotation>\n  <size><width>40</width>\n  <object>\n</annotation>\n")
    with pytest.raises(DataError) as info:
        voc_to_coco(devkit, tmp_path / "out")
    message = str(info.value)
    assert "000002.xml" in message and "malformed XML at line 4" in message


def test_unknown_class_names_file_and_object(devkit: Path, tmp_path: Path) -> None:
    xml = devkit / "VOC2007/Annotations/000001.xml"
    xml.write_text(_xml([("dog", (1, 1, 20, 10), 0), ("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError) as info:
        voc_to_coco(devkit, tmp_path / "out")
    message = str(info.value)
    assert "000001.xml" in message and "object[1]" in message and "'unicorn'" in message
    assert "expected one of" in message and "'aeroplane'" in message


def test_box_outside_image_names_file_and_object(devkit: Path, tmp_path: Path) -> None:
    xml = devkit / "VOC2007/Annotations/000003.xml"
    xml.write_text(_xml([("bicycle", (2, 3, 4, 5), 0), ("car", (5, 5, W + 2, 10), 0)]))
    with pytest.raises(DataError) as info:
        voc_to_coco(devkit, tmp_path / "out")
    message = str(info.value)
    assert "000003.xml" in message and "object[1] ('car')" in message
    assert "outside the 40x30 image" in message


def test_inverted_box_and_bad_number(devkit: Path, tmp_path: Path) -> None:
    xml = devkit / "VOC2007/Annotations/000003.xml"
    xml.write_text(_xml([("car", (10, 5, 4, 10), 0)]))
    with pytest.raises(DataError, match=r"000003\.xml.*object\[0\].*positive width"):
        voc_to_coco(devkit, tmp_path / "out")
    xml.write_text(_xml([("car", (1, 1, "ten", 10), 0)]))  # type: ignore[list-item]
    with pytest.raises(DataError, match=r"object\[0\].*<xmax> is 'ten', expected a number"):
        voc_to_coco(devkit, tmp_path / "out")


def test_missing_image(devkit: Path, tmp_path: Path) -> None:
    (devkit / "VOC2007/JPEGImages/000002.jpg").unlink()
    with pytest.raises(DataError, match=r"000002\.xml.*image file .*000002\.jpg.*does not exist"):
        voc_to_coco(devkit, tmp_path / "out")


def test_missing_annotation(devkit: Path, tmp_path: Path) -> None:
    (devkit / "VOC2007/Annotations/000003.xml").unlink()
    with pytest.raises(DataError, match=r"000003\.xml.* does not exist.*test\.txt' line 1"):
        voc_to_coco(devkit, tmp_path / "out")


def test_image_in_both_splits(devkit: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'000003'.*trainval.*test.*disjoint"):
        (devkit / "VOC2007/ImageSets/Main/trainval.txt").write_text("000001\n000003\n")
        voc_to_coco(devkit, tmp_path / "out")


# --- command line ---------------------------------------------------------------------------


def test_cli_voc2coco(devkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = spnas.cli.main(["data", "voc2coco", "--voc", str(devkit), "--out", str(out), "--copy"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert "\n" not in line
    assert "2 train images (3 boxes, 1 ignore)" in line
    assert "1 val images (2 boxes, 1 ignore)" in line
    assert "20 classes" in line and str(out) in line
    assert not (out / "images/train/VOC2007/000001.jpg").is_symlink()


def test_cli_voc2coco_error(
    devkit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = spnas.cli.main(
        ["data", "voc2coco", "--voc", str(devkit), "--out", str(tmp_path / "o"), "--val", "2007"]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("spnas data: error: ")
    assert "not YEAR:SET" in captured.err and "Traceback" not in captured.err
