"""EuroCity Persons (ECP) → COCO: convert the ECP detection benchmark into a data set directory.

Input, the layout of the ECP release (the test labels are not public, so ``train`` → train
and ``val`` → val)::

    ECP/day/labels/train/amsterdam/amsterdam_00001.json
    ECP/day/img/train/amsterdam/amsterdam_00001.png
    ECP/day/labels/val/...          ECP/day/img/val/...
    ECP/night/...

One JSON file per image::

    {"identity": "frame", "imagewidth": 1920, "imageheight": 1024, "tags": [],
     "children": [{"identity": "pedestrian", "x0": .., "y0": .., "x1": .., "y1": ..,
                   "tags": ["occluded>10"], "children": []},
                  {"identity": "rider", ..., "children": [{"identity": "bicycle", ...}]},
                  {"identity": "person-group-far-away", ...}, ...]}

Classes, those of the ECP detection benchmark (:data:`ECP_CLASSES`): ``pedestrian`` and
``rider``. Ignore regions: ``person-group-far-away`` (category ``pedestrian``) and
``rider+vehicle-group-far-away`` (category ``rider``) become ``iscrowd=1`` boxes, which ECP's
evaluation (and :mod:`spnas.evaluation.lamr`) uses to absorb detections without counting them
as false positives; training skips them. Everything else is not a person and is skipped:
vehicles (``bicycle``, ``motorbike``, ``scooter``, ``buggy``, ``wheelchair``, ... — the
children of riders), vehicle groups, and identities this module does not know. The object tree
is walked to any depth, so a person nested under another object is still found.

Not applied here, as they are evaluation settings rather than data: ECP's "reasonable" subset
(height >= 40 px, occlusion and truncation < 40 %) and the ``tags`` (occlusion, truncation,
``depiction``, ``sitting-lying``, ...), which are not carried over.

Boxes: ``x0, y0, x1, y1`` are pixel corners, so the COCO box is ``[x0, y0, x1 - x0, y1 - y0]``.
A box overhanging the frame is clipped to it (only a box with no part inside the image is an
error).

Output, the layout of :mod:`spnas.data._write`: ``train.json``, ``val.json`` and
``images/<split>/<time>/<city>/<city>_<id>.png``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spnas.data._write import (
    SPLITS,
    CocoSplitWriter,
    check_box,
    finish,
    number,
    prepare_out_dir,
)
from spnas.data.coco import DatasetSplits, read_json
from spnas.exceptions import DataError

__all__ = ["ECP_CLASSES", "ECP_IGNORE_REGIONS", "ECP_TIMES", "ecp_to_coco"]

_logger = logging.getLogger(__name__)

#: The ECP detection classes; category id = position + 1.
ECP_CLASSES: tuple[str, ...] = ("pedestrian", "rider")

#: Group identities written as ``iscrowd=1`` ignore regions, and the category they ignore.
ECP_IGNORE_REGIONS: dict[str, str] = {
    "person-group-far-away": "pedestrian",
    "rider+vehicle-group-far-away": "rider",
}

#: The lighting conditions ECP is released in, each a folder of its own.
ECP_TIMES: tuple[str, ...] = ("day", "night")


def ecp_to_coco(
    ecp_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    times: Sequence[str] = ("day",),
    link_images: bool = True,
) -> DatasetSplits:
    """Convert EuroCity Persons into a data set directory (see the module docstring).

    Args:
        ecp_root: the ``ECP`` folder (holding ``day/`` and ``night/``), the folder holding it,
            or (for one time) the ``day``/``night`` folder itself.
        out_dir: directory to write; created if missing, files of the same names replaced.
        times: ``"day"``, ``"night"`` or both; their images are pooled in each split.
        link_images: symlink the images (absolute targets) instead of copying them.

    Returns:
        The written data set directory.

    Raises:
        DataError: a missing folder, no label files, malformed JSON (file, line, column), a
            missing image, or a bad record (file and child path, e.g.
            ``children[3].children[0]``): a missing identity or corner, or a box with no part
            inside the image.
    """
    times = _check_times(times)
    root = Path(ecp_root)
    if not root.is_dir():
        raise DataError(f"ECP root {str(root)!r} is not a directory, expected the ECP folder")
    time_dirs = {time: _time_dir(root, time) for time in times}
    category_of = {name: k + 1 for k, name in enumerate(ECP_CLASSES)}
    out = prepare_out_dir(out_dir)
    writers = []
    for split in SPLITS:
        writer = CocoSplitWriter(out, split, ECP_CLASSES, link_images=link_images)
        for time, time_dir in time_dirs.items():
            labels_dir = time_dir / "labels" / split
            files = sorted(labels_dir.rglob("*.json")) if labels_dir.is_dir() else []
            if not files:
                raise DataError(
                    f"ECP {time} {split} labels: no JSON files under {str(labels_dir)!r}, "
                    f"expected labels/{split}/<city>/<city>_<id>.json"
                )
            for path in files:
                _convert_file(writer, path, time_dir, split, time, category_of)
        writers.append(writer)
    return finish(out, writers, f"EuroCity Persons ({'+'.join(times)})")


def _check_times(times: Sequence[str]) -> tuple[str, ...]:
    if isinstance(times, str):
        times = tuple(t.strip() for t in times.split(","))
    checked = tuple(dict.fromkeys(times))
    if not checked or not all(t in ECP_TIMES for t in checked):
        raise DataError(f"times: {times!r}, expected one or both of {list(ECP_TIMES)}")
    return checked


def _time_dir(root: Path, time: str) -> Path:
    candidates = [root / time, root / "ECP" / time]
    if root.name == time:
        candidates.insert(0, root)
    for candidate in candidates:
        if (candidate / "labels").is_dir():
            if not (candidate / "img").is_dir():
                raise DataError(
                    f"ECP {time} folder {str(candidate)!r} has labels/ but no img/, expected both"
                )
            return candidate
    tried = ", ".join(repr(str(c / "labels")) for c in candidates)
    raise DataError(
        f"ECP root {str(root)!r}: no {time} folder found (looked for {tried}), expected "
        f"ECP/{time}/labels and ECP/{time}/img"
    )


def _convert_file(
    writer: CocoSplitWriter,
    path: Path,
    time_dir: Path,
    split: str,
    time: str,
    category_of: dict[str, int],
) -> None:
    where = f"ECP label file {str(path)!r}"
    frame = read_json(path)
    if not isinstance(frame, dict):
        raise DataError(f"{where}: top level is a {type(frame).__name__}, expected an object")
    identity = frame.get("identity", "frame")
    if identity != "frame":
        raise DataError(f"{where}: 'identity' is {identity!r}, expected 'frame'")
    width, height = (frame.get(k) for k in ("imagewidth", "imageheight"))
    for key, value in (("imagewidth", width), ("imageheight", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DataError(f"{where}: {key!r} is {value!r}, expected a positive integer")
    relative = path.relative_to(time_dir / "labels" / split).with_suffix(".png")
    image = time_dir / "img" / split / relative
    if not image.is_file():
        raise DataError(
            f"{where}: image file {str(image)!r} does not exist, expected the frame's PNG"
        )
    image_id = writer.add_image(image, f"{time}/{relative.as_posix()}", width, height, where)
    for rec, child in _walk(frame, where):
        identity = child.get("identity")
        if not isinstance(identity, str):
            raise DataError(f"{rec}: 'identity' is {identity!r}, expected a string")
        if identity in category_of:
            category, crowd = category_of[identity], False
        elif identity in ECP_IGNORE_REGIONS:
            category, crowd = category_of[ECP_IGNORE_REGIONS[identity]], True
        else:
            continue
        rec = f"{rec} ({identity!r})"
        for key in ("x0", "y0", "x1", "y1"):
            if key not in child:
                raise DataError(f"{rec}: missing key {key!r}, expected x0, y0, x1, y1")
        x0, y0, x1, y1 = (number(child[k], rec, k) for k in ("x0", "y0", "x1", "y1"))
        given = f"box (x0 {x0:g}, y0 {y0:g}, x1 {x1:g}, y1 {y1:g})"
        box = check_box(x0, y0, x1, y1, width, height, rec, clip=True, given=given)
        writer.add_box(image_id, category, box, iscrowd=crowd)


def _walk(node: dict[str, Any], where: str, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object below ``node``, depth first, as ``(record name, object)``; the record
    name is ``where`` plus the object's path (``children[1].children[0]``)."""
    children = node.get("children") or []
    if not isinstance(children, list):
        raise DataError(f"{where}: {path or 'frame'} 'children' is {children!r}, expected a list")
    for i, child in enumerate(children):
        child_path = f"{path}.children[{i}]" if path else f"children[{i}]"
        rec = f"{where}: {child_path}"
        if not isinstance(child, dict):
            raise DataError(f"{rec}: expected an object, got {type(child).__name__}")
        yield rec, child
        yield from _walk(child, where, child_path)
