"""A data set checked record by record before a search uses it.

:func:`~spnas.data.coco.load_coco` validates the structure and geometry of a COCO json.
:func:`validate_dataset` adds what a search must know before its study is created: every box
is finite (JSON allows ``NaN`` and ``Infinity``, and ``NaN`` passes every comparison), both
splits have the same categories, and every image file exists and decodes. Each problem raises :class:`~spnas.exceptions.DataError` naming
the file and the record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tqdm import tqdm

from spnas.data.coco import CocoDataset, DatasetSplits, load_coco, read_json
from spnas.exceptions import DataError

_logger = logging.getLogger(__name__)


def check_finite_boxes(json_path: Path) -> None:
    """Every annotation's ``bbox`` holds finite numbers.

    Raises:
        DataError: naming the file, ``annotations[i] (id …)`` and the box.
    """
    data = read_json(json_path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    for i, ann in enumerate(annotations if isinstance(annotations, list) else ()):
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(bbox, list):
            continue  # load_coco names the malformed record
        if any(
            isinstance(v, float) and not math.isfinite(v) for v in bbox if not isinstance(v, bool)
        ):
            raise DataError(
                f"annotation file {str(json_path)!r}: annotations[{i}] (id {ann.get('id', '?')}): "
                f"bbox {bbox!r} is not finite, expected [x, y, width, height] finite numbers"
            )


def check_image_decodes(path: Path, record: str) -> None:
    """``path`` is an image file PIL can read (header and, for PNG, checksums; cheap).

    Raises:
        DataError: naming ``record`` and the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError as exc:
        raise DataError(f"{record}: image file {str(path)!r} does not exist") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"{record}: image file {str(path)!r} does not decode: {exc}") from exc


def check_same_categories(train: CocoDataset, val: CocoDataset) -> None:
    """Both splits have the same categories (ids and names): a model trained on one set of
    classes is evaluated on the other's ids.

    Raises:
        DataError: naming both files and the categories only one of them has (or names
            differently).
    """
    ours = {int(c["id"]): str(c["name"]) for c in train.categories}
    theirs = {int(c["id"]): str(c["name"]) for c in val.categories}
    if ours == theirs:
        return

    def listed(categories: dict[int, str], other: dict[int, str]) -> str:
        differ = [
            f"{cid} {name!r}" for cid, name in sorted(categories.items()) if other.get(cid) != name
        ]
        return ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")

    raise DataError(
        f"annotation files {str(train.json_path)!r} and {str(val.json_path)!r} have different "
        f"categories: {train.json_path.name} has {listed(ours, theirs) or 'no others'}, "
        f"{val.json_path.name} has {listed(theirs, ours) or 'no others'}; expected the same "
        "categories (id and name) in both"
    )


def check_annotations(splits: DatasetSplits) -> tuple[CocoDataset, CocoDataset]:
    """Check both splits' records (:func:`~spnas.data.coco.load_coco`), finite boxes, and that
    their categories are the same; the images are not opened. Returns the train and val
    splits.

    Raises:
        DataError: for the first bad record, naming the file and the record.
    """
    loaded = []
    for json_path in (splits.train_json, splits.val_json):
        check_finite_boxes(json_path)
        loaded.append(load_coco(json_path, splits.image_root, check_images=True))
    train, val = loaded
    check_same_categories(train, val)
    return train, val


def check_images(dataset: CocoDataset, show_progress: bool = False) -> None:
    """Every image file of ``dataset`` exists and decodes.

    Raises:
        DataError: naming the annotation file, the image id and the file.
    """
    where = f"annotation file {str(dataset.json_path)!r}"
    split = dataset.json_path.stem
    images = tqdm(
        dataset.images, desc=f"checking {split} images", disable=not show_progress, unit="img"
    )
    for image in images:
        check_image_decodes(image.path, f"{where}: image id {image.id}")
    _logger.debug("%s: %d images decode", dataset.json_path, len(dataset.images))


def validate_dataset(
    splits: DatasetSplits, show_progress: bool = False
) -> tuple[CocoDataset, CocoDataset]:
    """Check both splits of a data set: records (:func:`~spnas.data.coco.load_coco`), finite
    boxes, the same categories, and image files that exist and decode. Returns the train and
    val splits.

    Raises:
        DataError: for the first bad record, naming the file and the record.
    """
    train, val = check_annotations(splits)
    for dataset in (train, val):
        check_images(dataset, show_progress)
    return train, val
