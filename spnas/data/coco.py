"""COCO-format detection data: load, validate, and locate a data set's splits.

Every data set spnas trains on is a COCO json plus an image root. Validation happens once, on
load, and every problem raises :class:`~spnas.exceptions.DataError` naming the file and the
record (``images[3]``, ``annotations[12] (id 13)``) and what was expected, so a bad record is
found before hours of training rather than in the middle of it.

A data set *directory* holds ``train.json`` and ``val.json``; images live under
``DIR/images`` when that folder exists (the layout :mod:`spnas.data.synthetic` and the
converters write), else under ``DIR``. ``file_name`` in the json is relative to that root.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spnas.exceptions import DataError

_logger = logging.getLogger(__name__)

#: Boxes may overhang the image by this many pixels (rounding in real annotations) and are
#: clipped; anything further out is an error.
BOX_TOLERANCE_PX = 1.0


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One image and its (validated, clipped) boxes in ``[x, y, w, h]`` pixels."""

    id: int
    path: Path
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    category_ids: tuple[int, ...]
    iscrowd: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CocoDataset:
    """A validated COCO detection split."""

    json_path: Path
    image_root: Path
    images: tuple[CocoImage, ...]
    categories: tuple[Mapping[str, Any], ...]

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(int(c["id"]) for c in self.categories)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(c["name"]) for c in self.categories)

    @property
    def num_annotations(self) -> int:
        return sum(len(img.boxes) for img in self.images)

    def contiguous_label(self) -> dict[int, int]:
        """COCO category id → 0-based class index, in category order."""
        return {cid: i for i, cid in enumerate(self.category_ids)}

    def __iter__(self) -> Iterator[CocoImage]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """Where a data set's train and validation splits are."""

    root: Path
    train_json: Path
    val_json: Path
    image_root: Path

    @classmethod
    def from_dir(cls, root: str | Path) -> DatasetSplits:
        """Locate ``train.json``, ``val.json`` and the image root in a data set directory.

        Raises:
            DataError: naming the directory and the missing file.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data set directory {str(root)!r} does not exist")
        for name in ("train.json", "val.json"):
            if not (root / name).is_file():
                raise DataError(
                    f"data set directory {str(root)!r} has no {name}: expected train.json and "
                    "val.json (COCO format) with images under images/ (see `spnas data --help` "
                    "for converters)"
                )
        images = root / "images"
        return cls(
            root=root,
            train_json=root / "train.json",
            val_json=root / "val.json",
            image_root=images if images.is_dir() else root,
        )

    def load(self, split: str, check_images: bool = True) -> CocoDataset:
        """Load and validate ``"train"`` or ``"val"``."""
        if split not in ("train", "val"):
            raise DataError(f"split {split!r}: expected 'train' or 'val'")
        path = self.train_json if split == "train" else self.val_json
        return load_coco(path, self.image_root, check_images=check_images)


def read_json(path: Path) -> Any:
    """Read a json file; malformed json names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"annotation file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"annotation file {str(path)!r} could not be read: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"annotation file {str(path)!r}: malformed JSON at line {exc.lineno} column "
            f"{exc.colno}: {exc.msg}"
        ) from exc


def _require(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: {key!r} is {value!r}, expected {expected}")
    return value


def _section(data: dict[str, Any], key: str, where: str) -> Sequence[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{where}: missing list {key!r} (COCO detection format)")
    return value


def load_coco(
    json_path: str | Path, image_root: str | Path | None = None, *, check_images: bool = True
) -> CocoDataset:
    """Load and validate a COCO detection json.

    Args:
        json_path: the annotation file.
        image_root: folder that ``file_name`` is relative to; by default ``images/`` beside
            the json when it exists, else the json's folder.
        check_images: check that every image file exists.

    Raises:
        DataError: for malformed json, a missing key, a missing image file, a duplicate id, a
            box outside its image (beyond :data:`BOX_TOLERANCE_PX`), a non-positive box, or
            an unknown category or image id; the message names the file and the record.
    """
    json_path = Path(json_path)
    if image_root is None:
        beside = json_path.parent / "images"
        image_root = beside if beside.is_dir() else json_path.parent
    image_root = Path(image_root)
    data = read_json(json_path)
    where = f"annotation file {str(json_path)!r}"
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")

    known_categories = _read_categories(data, where)
    image_records = _read_images(data, where, image_root, check_images)
    for i, ann in enumerate(_section(data, "annotations", where)):
        _read_annotation(ann, f"{where}: annotations[{i}]", image_records, known_categories)

    images = tuple(
        CocoImage(
            id=iid,
            path=rec["path"],
            width=rec["width"],
            height=rec["height"],
            boxes=tuple(a[0] for a in rec["anns"]),
            category_ids=tuple(a[1] for a in rec["anns"]),
            iscrowd=tuple(a[2] for a in rec["anns"]),
        )
        for iid, rec in image_records.items()
    )
    dataset = CocoDataset(
        json_path=json_path,
        image_root=image_root,
        images=images,
        categories=tuple(known_categories[c] for c in sorted(known_categories)),
    )
    _logger.debug(
        "loaded %s: %d images, %d boxes, %d categories",
        json_path,
        len(images),
        dataset.num_annotations,
        len(known_categories),
    )
    return dataset


def _read_categories(data: dict[str, Any], where: str) -> dict[int, Mapping[str, Any]]:
    """The file's categories by id; at least one, ids unique."""
    known_categories: dict[int, Mapping[str, Any]] = {}
    for i, cat in enumerate(_section(data, "categories", where)):
        rec = f"{where}: categories[{i}]"
        cid = _require(cat, "id", int, rec)
        _require(cat, "name", str, rec)
        if cid in known_categories:
            raise DataError(f"{rec}: duplicate category id {cid}")
        known_categories[cid] = cat
    if not known_categories:
        raise DataError(f"{where}: 'categories' is empty, expected at least one category")
    return known_categories


def _read_images(
    data: dict[str, Any], where: str, image_root: Path, check_images: bool
) -> dict[int, dict[str, Any]]:
    """The file's images by id (path, size and an empty annotation list each)."""
    image_records: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(_section(data, "images", where)):
        rec = f"{where}: images[{i}]"
        iid = _require(img, "id", int, rec)
        file_name = _require(img, "file_name", str, rec)
        width = _require(img, "width", int, rec)
        height = _require(img, "height", int, rec)
        if width <= 0 or height <= 0:
            raise DataError(f"{rec} (id {iid}): size {width}x{height}, expected positive sides")
        if iid in image_records:
            raise DataError(f"{rec}: duplicate image id {iid}")
        path = image_root / file_name
        if check_images and not path.is_file():
            raise DataError(
                f"{rec} (id {iid}): image file {file_name!r} not found under {str(image_root)!r}"
            )
        image_records[iid] = {"path": path, "width": width, "height": height, "anns": []}
    return image_records


def _read_annotation(
    ann: Any,
    rec: str,
    image_records: dict[int, dict[str, Any]],
    known_categories: Mapping[int, Any],
) -> None:
    """Check one annotation and append its box, clipped to its image, to the image's list."""
    aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
    rec_id = f"{rec} (id {aid})"
    iid = _require(ann, "image_id", int, rec_id)
    cid = _require(ann, "category_id", int, rec_id)
    bbox = _require(ann, "bbox", list, rec_id)
    if iid not in image_records:
        raise DataError(f"{rec_id}: image_id {iid} is not among the file's images")
    if cid not in known_categories:
        raise DataError(
            f"{rec_id}: category_id {cid} is unknown, expected one of {sorted(known_categories)}"
        )
    if len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
    ):
        raise DataError(f"{rec_id}: bbox {bbox!r}, expected [x, y, width, height] numbers")
    image = image_records[iid]
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{rec_id}: bbox {bbox!r} has a non-positive width or height")
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > image["width"] + tol or y + h > image["height"] + tol:
        raise DataError(
            f"{rec_id}: bbox {bbox!r} lies outside its {image['width']}x{image['height']} "
            f"image {image['path'].name!r} (image_id {iid})"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
    iscrowd = ann.get("iscrowd", 0)
    image["anns"].append(((x0, y0, x1 - x0, y1 - y0), cid, int(bool(iscrowd))))
