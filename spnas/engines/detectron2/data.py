"""Registering COCO-format splits in detectron2's catalogs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from spnas.data.coco import CocoDataset, load_coco


def register_coco_split(json_path: str | Path, image_root: str | Path) -> str:
    """Validate a COCO split and register it; returns its catalog name.

    The name is derived from the resolved paths and the json's modification time, so the same
    split registers once per process (re-registration is a no-op), and a changed file gets a
    new name instead of stale cached metadata.
    """
    json_path, image_root = Path(json_path).resolve(), Path(image_root).resolve()
    dataset: CocoDataset = load_coco(json_path, image_root)  # our errors name file and record
    key = f"{json_path}|{image_root}|{json_path.stat().st_mtime_ns}"
    name = f"spnas_{json_path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_path), str(image_root))
        MetadataCatalog.get(name).set(thing_classes=list(dataset.class_names))
    return name
