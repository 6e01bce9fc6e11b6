"""COCO as it ships → a data set directory, without copying an image.

Input, the layout of the COCO release (2017; 2014 alike with ``train="train2014"``)::

    COCO/train2017/000000000009.jpg ...
    COCO/val2017/000000000139.jpg ...
    COCO/annotations/instances_train2017.json
    COCO/annotations/instances_val2017.json

Output, the layout :class:`~spnas.data.coco.DatasetSplits` reads::

    OUT/train.json  OUT/val.json      the annotation files, ``file_name`` prefixed by the
                                      image folder (``train2017/000000000009.jpg``)
    OUT/images/train2017 -> COCO/train2017     one symlink per image folder (absolute target)
    OUT/images/val2017   -> COCO/val2017

A data set directory has one image root for both splits, while COCO's annotation files name
their images relative to each split's own folder; prefixing ``file_name`` with the folder and
linking the two folders under ``images/`` joins them at the cost of two links, where linking
every image would cost 123,287. Everything else in the annotation files (segmentations,
licenses, ids) is kept as it is.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from spnas._io import atomic_write
from spnas.data._write import prepare_out_dir
from spnas.data.coco import DatasetSplits, _require, _section, read_json
from spnas.exceptions import DataError

__all__ = ["COCO_LAYOUT", "link_coco"]

_logger = logging.getLogger(__name__)

#: What :func:`link_coco` expects under the COCO folder, for error messages.
COCO_LAYOUT = "<split>/*.jpg and annotations/instances_<split>.json for each split"


def link_coco(
    coco_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    train: str = "train2017",
    val: str = "val2017",
) -> DatasetSplits:
    """Make ``out_dir`` a data set directory of the COCO release at ``coco_root``.

    Args:
        coco_root: the folder holding COCO's image folders and ``annotations/``.
        out_dir: the data set directory to write (created; an earlier run's files are
            replaced).
        train, val: the image folders of the training and validation splits; their
            annotations are ``annotations/instances_<name>.json``.

    Returns:
        The data set directory's splits (``data.dir`` of a study is ``out_dir``).

    Raises:
        DataError: naming the path, when ``coco_root``, a split's image folder or its
            annotation file is missing, when an annotation file is not COCO json, or when
            ``out_dir/images/<name>`` exists and is not a link. Nothing is written before
            every input was found.
    """
    root = Path(coco_root)
    if not root.is_dir():
        raise DataError(
            f"COCO folder {str(root)!r} does not exist, expected a folder holding {COCO_LAYOUT}"
        )
    sources = {split: _locate(root, name) for split, name in (("train", train), ("val", val))}
    out = prepare_out_dir(out_dir)
    for split, (name, folder, json_path) in sources.items():
        _link_folder(folder, out / "images" / name)
        count = _write_split(json_path, name, out / f"{split}.json")
        _logger.info("COCO %s: %d images -> %s split of %s", name, count, split, out)
    return DatasetSplits.from_dir(out)


def _locate(root: Path, name: str) -> tuple[str, Path, Path]:
    """``(name, image folder, annotation file)`` of one split, both checked to exist."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise DataError(f"COCO split {name!r}: expected the name of a folder in {str(root)!r}")
    folder = root / name
    json_path = root / "annotations" / f"instances_{name}.json"
    if not folder.is_dir():
        raise DataError(
            f"COCO folder {str(root)!r} has no image folder {name}/ ({str(folder)!r}), "
            f"expected {COCO_LAYOUT}"
        )
    if not json_path.is_file():
        raise DataError(
            f"COCO folder {str(root)!r} has no annotation file {str(json_path)!r}, "
            f"expected {COCO_LAYOUT}"
        )
    return name, folder, json_path


def _write_split(json_path: Path, name: str, path: Path) -> int:
    """Write ``json_path`` to ``path`` with ``file_name`` prefixed by ``name/``; return the
    number of images."""
    data = read_json(json_path)
    where = f"annotation file {str(json_path)!r}"
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    images = _section(data, "images", where)
    for i, image in enumerate(images):
        file_name = _require(image, "file_name", str, f"{where}: images[{i}]")
        image["file_name"] = f"{name}/{file_name}"
    text = json.dumps(data, separators=(",", ":"))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return len(images)


def _link_folder(folder: Path, link: Path) -> None:
    """Point ``link`` at ``folder`` (absolute target), replacing an earlier link."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise DataError(
            f"{str(link)!r} exists and is not a link, expected no file there or the link an "
            "earlier `spnas data coco` made (remove it, or write to another --out)"
        )
    try:
        link.symlink_to(folder.resolve(), target_is_directory=True)
    except OSError as exc:
        raise DataError(f"could not link {str(link)!r} to {str(folder)!r}: {exc}") from exc
