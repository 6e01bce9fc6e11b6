"""A data set checked record by record before a search uses it.

:func:`~spnas.data.coco.load_coco` validates the structure and geometry of a COCO json.
:func:`validate_dataset` adds what a search must know before its study is created: every box
is finite (JSON allows ``NaN`` and ``Infinity``, and ``NaN`` passes every comparison), and every
image file exists and decodes. Each problem raises :class:`~spnas.exceptions.DataError` naming
the file and the record.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tqdm import tqdm

from spnas.data.coco import DatasetSplits, load_coco, read_json
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


def validate_dataset(splits: DatasetSplits, show_progress: bool = False) -> None:
    """Check both splits of a data set: records (:func:`~spnas.data.coco.load_coco`), finite
    boxes, and image files that exist and decode.

    Raises:
        DataError: for the first bad record, naming the file and the record.
    """
    for split, json_path in (("train", splits.train_json), ("val", splits.val_json)):
        check_finite_boxes(json_path)
        dataset = load_coco(json_path, splits.image_root, check_images=True)
        where = f"annotation file {str(json_path)!r}"
        images = tqdm(
            dataset.images, desc=f"checking {split} images", disable=not show_progress, unit="img"
        )
        for image in images:
            check_image_decodes(image.path, f"{where}: image id {image.id}")
        _logger.debug("%s: %d images decode", json_path, len(dataset.images))
