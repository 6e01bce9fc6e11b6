"""BDD100K → COCO: convert the BDD100K (2018) detection labels into a spnas data set directory.

Input, the layout of the 2018 release::

    bdd100k/labels/bdd100k_labels_images_train.json
    bdd100k/labels/bdd100k_labels_images_val.json
    bdd100k/images/100k/train/0000f77c-6257be58.jpg ...
    bdd100k/images/100k/val/...

Each label file is a list of frames::

    {"name": "0000f77c-6257be58.jpg", "attributes": {"weather": ..., "timeofday": ...},
     "labels": [{"category": "car", "box2d": {"x1": .., "y1": .., "x2": .., "y2": ..},
                 "attributes": {"occluded": false, "truncated": false}, "id": 3},
                {"category": "lane", "poly2d": [...]}, ...]}

Only labels with a ``box2d`` are converted: lane markings and drivable areas (``poly2d``) are
skipped whatever their category. A ``box2d`` label of a category outside ``classes`` is an
error (for the 2020 ``det_20`` labels, whose names differ, pass matching ``classes``). A frame
with no ``labels`` becomes an image without boxes.

Boxes: ``x1, y1, x2, y2`` are continuous pixel coordinates, so the COCO box is
``[x1, y1, x2 - x1, y2 - y1]``, as BDD's own 2018 COCO export computes it.

Image size: BDD100K frames are 1280x720 (:data:`BDD_IMAGE_SIZE`). The labels do not record it,
so it is read from each image's header by default; ``read_sizes=False`` assumes
``image_size`` instead (no image is opened, only checked to exist).

Output, the layout of :mod:`spnas.data._write`: ``train.json``, ``val.json`` and
``images/<split>/<name>``. The frame attributes (weather, scene, time of day) and the box
attributes (occluded, truncated) are not carried over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spnas.data._write import (
    SPLITS,
    CocoSplitWriter,
    check_box,
    check_classes,
    finish,
    number,
    prepare_out_dir,
    read_image_size,
)
from spnas.data.coco import DatasetSplits, read_json
from spnas.exceptions import DataError

__all__ = ["BDD_CLASSES", "BDD_IMAGE_SIZE", "bdd_to_coco"]

_logger = logging.getLogger(__name__)

#: The 10 BDD100K (2018) detection classes; category id = position + 1.
BDD_CLASSES: tuple[str, ...] = (
    "person",
    "rider",
    "car",
    "bus",
    "truck",
    "bike",
    "motor",
    "traffic light",
    "traffic sign",
    "train",
)

#: ``(width, height)`` of every BDD100K frame.
BDD_IMAGE_SIZE: tuple[int, int] = (1280, 720)

PathLike = str | os.PathLike[str]


def bdd_to_coco(
    bdd_root: PathLike | None,
    out_dir: PathLike,
    *,
    labels_train: PathLike | None = None,
    labels_val: PathLike | None = None,
    images_train: PathLike | None = None,
    images_val: PathLike | None = None,
    classes: Sequence[str] = BDD_CLASSES,
    read_sizes: bool = True,
    image_size: tuple[int, int] = BDD_IMAGE_SIZE,
    link_images: bool = True,
) -> DatasetSplits:
    """Convert BDD100K detection labels into a data set directory (see the module docstring).

    Args:
        bdd_root: the ``bdd100k`` folder (or the folder holding it); paths not given below are
            taken from its standard layout. ``None`` when all four are given.
        out_dir: directory to write; created if missing, files of the same names replaced.
        labels_train: ``bdd100k_labels_images_train.json``.
        labels_val: ``bdd100k_labels_images_val.json``.
        images_train: folder of the training images (``images/100k/train``).
        images_val: folder of the validation images (``images/100k/val``).
        classes: category names, in category-id order.
        read_sizes: read each image's size from its header (else assume ``image_size``).
        image_size: ``(width, height)`` assumed when ``read_sizes`` is off.
        link_images: symlink the images (absolute targets) instead of copying them.

    Returns:
        The written data set directory.

    Raises:
        DataError: a missing label file or image folder, malformed JSON (file, line, column),
            or a bad record: a frame without a name, a missing image, a ``box2d`` label of an
            unknown category, a malformed or out-of-image box (file, frame index and name,
            label index).
    """
    names = check_classes(classes)
    category_of = {name: k + 1 for k, name in enumerate(names)}
    size = _check_size(image_size)
    given = {
        "train": (labels_train, images_train),
        "val": (labels_val, images_val),
    }
    sources = {split: _locate(bdd_root, split, *given[split]) for split in SPLITS}
    out = prepare_out_dir(out_dir)
    writers = []
    for split in SPLITS:
        labels, images = sources[split]
        writer = CocoSplitWriter(out, split, names, link_images=link_images)
        _convert_split(writer, labels, images, category_of, read_sizes, size)
        writers.append(writer)
    return finish(out, writers, "BDD100K detection")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DataError(f"image_size: {size!r}, expected (width, height) positive integers")
    return int(size[0]), int(size[1])


def _locate(
    bdd_root: PathLike | None, split: str, labels: PathLike | None, images: PathLike | None
) -> tuple[Path, Path]:
    """The label file and image folder of ``split``: as given, else from ``bdd_root``."""
    if labels is None or images is None:
        if bdd_root is None:
            raise DataError(
                f"BDD100K {split} split: the label file and image folder were not both given "
                "and there is no BDD100K root to find them in, expected labels_"
                f"{split}/images_{split} (--labels-{split}/--images-{split}) or bdd_root (--bdd)"
            )
        root = Path(bdd_root)
        if not root.is_dir():
            raise DataError(f"BDD100K root {str(root)!r} is not a directory")
        base = root / "bdd100k" if (root / "bdd100k" / "labels").is_dir() else root
        if labels is None:
            labels = base / "labels" / f"bdd100k_labels_images_{split}.json"
        if images is None:
            images = base / "images" / "100k" / split
    labels, images = Path(labels), Path(images)
    if not labels.is_file():
        raise DataError(
            f"BDD100K {split} label file {str(labels)!r} does not exist, expected "
            f"bdd100k_labels_images_{split}.json"
        )
    if not images.is_dir():
        raise DataError(
            f"BDD100K {split} image folder {str(images)!r} does not exist, expected the "
            f"folder of the {split} images (images/100k/{split})"
        )
    return labels, images


def _convert_split(
    writer: CocoSplitWriter,
    labels_json: Path,
    images_dir: Path,
    category_of: dict[str, int],
    read_sizes: bool,
    size: tuple[int, int],
) -> None:
    where = f"BDD100K label file {str(labels_json)!r}"
    frames = read_json(labels_json)
    if not isinstance(frames, list):
        raise DataError(
            f"{where}: top level is a {type(frames).__name__}, expected a list of frames"
        )
    if not frames:
        raise DataError(f"{where}: the list of frames is empty, expected at least one frame")
    skipped = 0
    for i, frame in enumerate(frames):
        rec = f"{where}: frames[{i}]"
        if not isinstance(frame, dict):
            raise DataError(f"{rec}: expected an object, got {type(frame).__name__}")
        name = frame.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{rec}: 'name' is {name!r}, expected the image file name")
        rec = f"{rec} ({name!r})"
        image = images_dir / name
        if not image.is_file():
            raise DataError(
                f"{rec}: image file {str(image)!r} does not exist, expected the frame's image "
                f"in {str(images_dir)!r}"
            )
        width, height = read_image_size(image, rec) if read_sizes else size
        image_id = writer.add_image(image, name, width, height, rec)
        labels = frame.get("labels") or []
        if not isinstance(labels, list):
            raise DataError(f"{rec}: 'labels' is {labels!r}, expected a list")
        for j, label in enumerate(labels):
            box = _box(label, f"{rec}: labels[{j}]", category_of, width, height)
            if box is None:
                skipped += 1
                continue
            writer.add_box(image_id, *box)
    _logger.debug("%s: skipped %d labels without box2d", where, skipped)


def _box(
    label: Any, rec: str, category_of: dict[str, int], width: int, height: int
) -> tuple[int, list[float]] | None:
    """``(category id, [x, y, w, h])`` of a ``box2d`` label; ``None`` for other labels."""
    if not isinstance(label, dict):
        raise DataError(f"{rec}: expected an object, got {type(label).__name__}")
    box2d = label.get("box2d")
    if box2d is None:
        return None
    category = label.get("category")
    if not isinstance(category, str) or category not in category_of:
        raise DataError(
            f"{rec}: category {category!r} of a box2d label is unknown, expected one of "
            f"{sorted(category_of)}"
        )
    rec = f"{rec} ({category!r})"
    if not isinstance(box2d, dict):
        raise DataError(f"{rec}: 'box2d' is {box2d!r}, expected {{x1, y1, x2, y2}}")
    for key in ("x1", "y1", "x2", "y2"):
        if key not in box2d:
            raise DataError(f"{rec}: 'box2d' has no {key!r}, expected x1, y1, x2, y2")
    x1, y1, x2, y2 = (number(box2d[k], f"{rec}: box2d", k) for k in ("x1", "y1", "x2", "y2"))
    given = f"box2d (x1 {x1:g}, y1 {y1:g}, x2 {x2:g}, y2 {y2:g})"
    return category_of[category], check_box(x1, y1, x2, y2, width, height, rec, given=given)
