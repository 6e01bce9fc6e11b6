"""Pascal VOC → COCO: convert a VOCdevkit into a spnas data set directory.

Input, the layout of the VOC 2007 and 2012 archives::

    VOCdevkit/VOC2007/Annotations/000005.xml
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt   one image id per line
    VOCdevkit/VOC2007/ImageSets/Main/test.txt
    VOCdevkit/VOC2007/JPEGImages/000005.jpg
    VOCdevkit/VOC2012/...

``voc_root`` may be the ``VOCdevkit`` folder, the folder holding it, or (when every set comes
from one year) a single ``VOC<year>`` folder. The usual protocols are ``2007:trainval`` →
``2007:test`` (VOC07) and ``2007:trainval,2012:trainval`` → ``2007:test`` (VOC07+12).

Output, the layout of :mod:`spnas.data._write`: ``train.json``, ``val.json`` and
``images/<split>/VOC<year>/<id>.jpg`` (the year keeps names unique across years).

Boxes: VOC corners are 1-based and inclusive (``xmin=1, xmax=500`` spans a whole 500 px wide
image), so the COCO box is ``x = xmin - 1``, ``w = xmax - xmin + 1`` (likewise for y).

``difficult`` objects: by default they become ``iscrowd=1`` *ignore regions*. That is the
official VOC protocol: the devkit neither counts a detection on a difficult object as a false
positive nor counts the object as missed, and COCO evaluation treats ``iscrowd`` ground truth
the same way; training (detectron2, the crops of reignition) skips ``iscrowd`` boxes.
Dropping them instead would turn every correct detection of a difficult object into a false
positive. ``use_difficult=True`` keeps them as ordinary boxes (``iscrowd=0``), trained on and
evaluated like any other.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from spnas.data._write import (
    SPLITS,
    CocoSplitWriter,
    check_box,
    check_classes,
    finish,
    prepare_out_dir,
    read_image_size,
)
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError

__all__ = ["VOC_CLASSES", "parse_voc_sets", "voc_to_coco"]

_logger = logging.getLogger(__name__)

#: The 20 Pascal VOC classes in the standard order; category id = position + 1.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VocSets = Sequence[tuple[str | int, str]]


def parse_voc_sets(text: str) -> tuple[tuple[str, str], ...]:
    """``"2007:trainval,2012:trainval"`` → ``(("2007", "trainval"), ("2012", "trainval"))``."""
    sets = []
    for item in text.split(","):
        year, sep, name = item.strip().partition(":")
        if not sep or not year.strip() or not name.strip():
            raise DataError(
                f"VOC image sets {text!r}: item {item.strip()!r} is not YEAR:SET, expected "
                "for example '2007:trainval,2012:trainval'"
            )
        sets.append((year.strip(), name.strip()))
    return tuple(sets)


def voc_to_coco(
    voc_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    train_sets: VocSets = (("2007", "trainval"),),
    val_sets: VocSets = (("2007", "test"),),
    classes: Sequence[str] = VOC_CLASSES,
    use_difficult: bool = False,
    link_images: bool = True,
) -> DatasetSplits:
    """Convert Pascal VOC image sets into a data set directory (see the module docstring).

    Args:
        voc_root: the ``VOCdevkit`` folder, its parent, or one ``VOC<year>`` folder.
        out_dir: directory to write; created if missing, files of the same names replaced.
        train_sets: ``(year, set)`` pairs whose images form the training split, for example
            ``(("2007", "trainval"), ("2012", "trainval"))``.
        val_sets: ``(year, set)`` pairs of the validation split.
        classes: category names, in category-id order; an object of another class is an
            error.
        use_difficult: keep ``difficult`` objects as ordinary boxes instead of ignore regions.
        link_images: symlink the images (absolute targets) instead of copying them.

    Returns:
        The written data set directory.

    Raises:
        DataError: a missing folder, list file, annotation or image; malformed XML (file, line
            and column); an unknown class name or a box outside its image (file and object
            index); an image listed in both splits.
    """
    names = check_classes(classes)
    category_of = {name: k + 1 for k, name in enumerate(names)}
    root = Path(voc_root)
    if not root.is_dir():
        raise DataError(f"VOC root {str(root)!r} is not a directory, expected a VOCdevkit")
    split_sets = {
        "train": _check_sets(train_sets, "train_sets"),
        "val": _check_sets(val_sets, "val_sets"),
    }
    years = {year for sets in split_sets.values() for year, _ in sets}
    year_dirs = {year: _year_dir(root, year, single_year=len(years) == 1) for year in sorted(years)}

    # Read every list first: an image in both splits is an error before anything is written.
    listed: dict[str, dict[tuple[str, str], str]] = {}
    for split, sets in split_sets.items():
        listed[split] = {}
        for year, set_name in sets:
            for image_id, where in _read_image_set(year_dirs[year], set_name):
                listed[split].setdefault((year, image_id), where)
    overlap = sorted(listed["train"].keys() & listed["val"].keys())
    if overlap:
        key = overlap[0]
        raise DataError(
            f"VOC image {key[1]!r} of VOC{key[0]} is listed for training by "
            f"{listed['train'][key]} and for validation by {listed['val'][key]}, expected "
            "disjoint train and val sets"
        )

    out = prepare_out_dir(out_dir)
    writers = []
    for split in SPLITS:
        writer = CocoSplitWriter(out, split, names, link_images=link_images)
        for (year, image_id), where in sorted(listed[split].items()):
            _convert_image(
                writer, year_dirs[year], year, image_id, where, category_of, use_difficult
            )
        writers.append(writer)
    description = "Pascal VOC " + " → ".join(
        "+".join(f"{y}:{s}" for y, s in split_sets[split]) for split in SPLITS
    )
    return finish(out, writers, description)


def _check_sets(sets: VocSets, name: str) -> tuple[tuple[str, str], ...]:
    if isinstance(sets, str):
        return parse_voc_sets(sets)
    checked = []
    for item in sets:
        if (
            not isinstance(item, tuple | list)
            or len(item) != 2
            or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in item)
        ):
            raise DataError(
                f"{name}: item {item!r} is not a (year, set) pair, e.g. ('2007', 'test')"
            )
        checked.append((str(item[0]), str(item[1])))
    if not checked:
        raise DataError(f"{name}: expected at least one (year, set) pair, got none")
    return tuple(checked)


def _year_dir(root: Path, year: str, *, single_year: bool) -> Path:
    """The ``VOC<year>`` folder for ``year`` under (or at) ``root``."""
    candidates = [root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    # A lone VOC<year> folder serves the year it is named after, or any year when only one
    # is asked for and the folder's name does not say otherwise.
    if root.name == f"VOC{year}" or (single_year and not re.fullmatch(r"VOC\d{4}", root.name)):
        candidates.insert(0, root)
    for candidate in candidates:
        if (candidate / "Annotations").is_dir():
            for sub in ("JPEGImages", "ImageSets/Main"):
                if not (candidate / sub).is_dir():
                    raise DataError(
                        f"VOC{year} folder {str(candidate)!r} has no {sub}/, expected "
                        "Annotations/, ImageSets/Main/ and JPEGImages/"
                    )
            return candidate
    tried = ", ".join(repr(str(c / "Annotations")) for c in candidates)
    raise DataError(
        f"VOC root {str(root)!r}: no VOC{year} folder found (looked for {tried}), expected a "
        f"VOCdevkit holding VOC{year}/Annotations, ImageSets/Main and JPEGImages"
    )


def _read_image_set(year_dir: Path, set_name: str) -> Iterable[tuple[str, str]]:
    """``(image id, "file line N")`` for every id of ``ImageSets/Main/<set_name>.txt``."""
    path = year_dir / "ImageSets" / "Main" / f"{set_name}.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        available = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise DataError(
            f"VOC image set file {str(path)!r} does not exist, expected one of the lists in "
            f"{str(path.parent)!r}: {available}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"VOC image set file {str(path)!r} could not be read: {exc}") from exc
    ids = [
        (line.split()[0], f"{str(path)!r} line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not ids:
        raise DataError(f"VOC image set file {str(path)!r} lists no images, expected image ids")
    return ids


def _convert_image(
    writer: CocoSplitWriter,
    year_dir: Path,
    year: str,
    image_id: str,
    listed_by: str,
    category_of: dict[str, int],
    use_difficult: bool,
) -> None:
    xml_path = year_dir / "Annotations" / f"{image_id}.xml"
    jpg_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
    where = f"VOC annotation {str(xml_path)!r}"
    if not xml_path.is_file():
        raise DataError(
            f"{where} does not exist; image {image_id!r} is listed by {listed_by}, expected "
            "its annotation"
        )
    if not jpg_path.is_file():
        raise DataError(
            f"{where}: image file {str(jpg_path)!r} does not exist, expected the JPEG of "
            f"image {image_id!r}"
        )
    root = _parse_xml(xml_path, where)
    width, height = _xml_size(root, where)
    if width <= 0 or height <= 0:
        width, height = read_image_size(jpg_path, where)
    coco_id = writer.add_image(jpg_path, f"VOC{year}/{image_id}.jpg", width, height, where)
    for index, obj in enumerate(root.findall("object")):
        rec = f"{where}: object[{index}]"
        name = _text(obj, "name", rec).strip()
        if name not in category_of:
            raise DataError(
                f"{rec}: class {name!r} is unknown, expected one of {sorted(category_of)}"
            )
        rec = f"{rec} ({name!r})"
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{rec}: missing <bndbox>, expected xmin, ymin, xmax, ymax")
        xmin, ymin, xmax, ymax = (_float(box, tag, rec) for tag in ("xmin", "ymin", "xmax", "ymax"))
        # 1-based inclusive corners → 0-based half-open ones.
        given = f"bndbox (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g})"
        bbox = check_box(xmin - 1, ymin - 1, xmax, ymax, width, height, rec, given=given)
        writer.add_box(coco_id, category_of[name], bbox, iscrowd=is_difficult and not use_difficult)


def _parse_xml(path: Path, where: str) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        raise DataError(
            f"{where}: malformed XML at line {line} column {column + 1}: "
            f"{str(exc).rsplit(': line', 1)[0]}"
        ) from exc
    except OSError as exc:
        raise DataError(f"{where} could not be read: {exc}") from exc
    if root.tag != "annotation":
        raise DataError(f"{where}: root element is <{root.tag}>, expected <annotation>")
    return root


def _xml_size(root: ET.Element, where: str) -> tuple[int, int]:
    """``<size>``'s width and height, or ``(0, 0)`` when absent (then read from the image)."""
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return 0, 0
    return int(_float(size, "width", f"{where}: <size>")), int(
        _float(size, "height", f"{where}: <size>")
    )


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: missing <{tag}>, expected it with a value")
    return child.text


def _float(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text.strip()!r}, expected a number") from None
