"""What the COCO converters (:mod:`~spnas.data.voc`, :mod:`~spnas.data.bdd`,
:mod:`~spnas.data.ecp`) share: box checks, image placement, and writing a data set directory.

Every converter writes the layout :func:`~spnas.data.coco.DatasetSplits.from_dir` reads::

    train.json  val.json            COCO detection json, one per split
    images/train/...                the split's images, symlinked (default) or copied
    images/val/...

``file_name`` in the json is relative to ``out_dir/images`` (``train/VOC2007/000005.jpg``).
Image and annotation ids start at 1 in each split (pycocotools' evaluation treats id 0 as
"unmatched"); category ids are ``1..K`` in the converter's class order. ``iscrowd=1`` marks an
*ignore region* (a VOC ``difficult`` object, an ECP group of far-away persons): training skips
it, and evaluation neither rewards nor penalises detections on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from spnas._io import atomic_write
from spnas.data.coco import BOX_TOLERANCE_PX, DatasetSplits
from spnas.exceptions import DataError

_logger = logging.getLogger(__name__)

SPLITS: tuple[str, str] = ("train", "val")


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The class names as a tuple: non-empty, distinct, non-blank strings."""
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise DataError(f"classes: expected a sequence of class names, got {classes!r}")
    names = tuple(classes)
    if not names:
        raise DataError("classes: expected at least one class name, got none")
    if len(set(names)) != len(names):
        raise DataError(f"classes: {names!r} names a class twice, expected distinct names")
    return names


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` (and ``out_dir/images``), refusing an existing file."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"out_dir: expected a directory, got the existing file {str(root)!r}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    return root


def read_image_size(path: Path, where: str) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as exc:
        raise DataError(f"{where}: image file {str(path)!r} does not exist") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: image file {str(path)!r} could not be read: {exc}") from exc


def number(value: Any, where: str, key: str) -> float:
    """``value`` as a finite float; booleans, strings and NaN are errors."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: {key!r} is {value!r}, expected a finite number")
    return float(value)


def check_box(
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    width: int,
    height: int,
    where: str,
    *,
    clip: bool = False,
    given: str | None = None,
) -> list[float]:
    """Corners ``(x0, y0)``-``(x1, y1)`` in pixels → a COCO ``[x, y, w, h]`` inside the image.

    A box overhanging the ``width`` x ``height`` image by up to
    :data:`~spnas.data.coco.BOX_TOLERANCE_PX` is clipped; one further out is an error unless
    ``clip`` is set, in which case only a box with no part inside the image is an error.
    ``given`` describes the box as the source file wrote it, for error messages.

    Raises:
        DataError: naming ``where`` (file and record), for an empty or inverted box or one
            outside the image.
    """
    shown = given or f"box corners {(x0, y0, x1, y1)!r}"
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{where}: {shown} has x1 <= x0 or y1 <= y0, expected a box of "
            "positive width and height"
        )
    tol = BOX_TOLERANCE_PX
    outside = x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol
    if clip:
        outside = x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0
    if outside:
        expected = (
            "a box overlapping the image"
            if clip
            else f"a box within the image (up to {tol:g} px beyond its edges)"
        )
        raise DataError(
            f"{where}: {shown} lies outside the {width}x{height} image, expected {expected}"
        )
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x1, float(width)), min(y1, float(height))
    return [cx0, cy0, cx1 - cx0, cy1 - cy0]


def place_image(source: Path, dest: Path, *, link: bool) -> None:
    """Symlink (absolute target) or copy ``source`` to ``dest``, replacing what is there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        if link:
            dest.symlink_to(source.resolve())
        else:
            shutil.copyfile(source, dest)
    except OSError as exc:
        how = "link" if link else "copy"
        hint = " (copy the images instead: --copy, link_images=False)" if link else ""
        raise DataError(
            f"could not {how} image {str(source)!r} to {str(dest)!r}: {exc}{hint}"
        ) from exc


class CocoSplitWriter:
    """Collects one split's images and boxes and writes its COCO json.

    Images are placed under ``out_dir/images/<split>/<name>`` as they are added; the json is
    written last (and renamed into place), so a json on disk means its images are there.
    """

    def __init__(
        self, out_dir: Path, split: str, class_names: Sequence[str], *, link_images: bool
    ) -> None:
        self.out_dir = out_dir
        self.split = split
        self.class_names = tuple(class_names)
        self.link_images = link_images
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._file_names: dict[str, str] = {}

    @property
    def num_crowd(self) -> int:
        return sum(1 for a in self.annotations if a["iscrowd"])

    def add_image(self, source: Path, name: str, width: int, height: int, where: str) -> int:
        """Place ``source`` as ``<split>/<name>`` and record it; return its image id.

        ``where`` names the record the image comes from, for the duplicate-name error.
        """
        file_name = f"{self.split}/{name}"
        if file_name in self._file_names:
            raise DataError(
                f"{where}: image {name!r} was already added to the {self.split} split by "
                f"{self._file_names[file_name]}, expected every image once"
            )
        self._file_names[file_name] = where
        place_image(source, self.out_dir / "images" / file_name, link=self.link_images)
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)}
        )
        return image_id

    def add_box(
        self, image_id: int, category_id: int, bbox: Sequence[float], *, iscrowd: bool = False
    ) -> None:
        """Record a ``[x, y, w, h]`` box; ``category_id`` is 1-based in class order."""
        x, y, w, h = (round(float(v), 3) for v in bbox)
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x, y, w, h],
                "area": round(w * h, 3),
                "iscrowd": int(iscrowd),
            }
        )

    def write(self, description: str) -> Path:
        """Write ``out_dir/<split>.json``; return its path."""
        if not self.images:
            raise DataError(
                f"{description}: the {self.split} split has no images, expected at least one"
            )
        payload = {
            "info": {"description": f"{description}, {self.split} split", "version": "1"},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": k + 1, "name": name, "supercategory": "none"}
                for k, name in enumerate(self.class_names)
            ],
        }
        path = self.out_dir / f"{self.split}.json"
        text = json.dumps(payload, separators=(",", ":"))
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finish(out_dir: Path, writers: Sequence[CocoSplitWriter], description: str) -> DatasetSplits:
    """Write every split's json and return the data set directory."""
    for writer in writers:
        writer.write(description)
        _logger.info(
            "%s: %s split: %d images, %d boxes (%d ignore regions)",
            description,
            writer.split,
            len(writer.images),
            len(writer.annotations),
            writer.num_crowd,
        )
    return DatasetSplits.from_dir(out_dir)
