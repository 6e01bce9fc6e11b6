"""Detection data sets for spnas.

Every data set ends up as COCO-format json plus an image root, which both engines read:

- :func:`make_synthetic_dataset` draws a small shapes-detection set, so that searches, tests and
  demos run on a laptop with nothing downloaded; its :data:`PROFILES` (``shapes``,
  ``small-objects``, ``large-objects``) make benchmarks where different backbones win.
- :func:`voc_to_coco`, :func:`bdd_to_coco` and :func:`ecp_to_coco` convert Pascal VOC,
  BDD100K and EuroCity Persons into the same layout (``train.json``, ``val.json``,
  ``images/``), which :class:`spnas.data.coco.DatasetSplits` reads.
- :func:`link_coco` makes COCO as it ships (``train2017/``, ``val2017/``,
  ``annotations/instances_*.json``) such a directory, linking the image folders.
- :func:`validate_dataset` checks every record and image once (:func:`check_annotations`
  the records, :func:`check_images` the image files); :func:`dataset_fingerprint`
  and :func:`check_fingerprint` tell later, without opening an image, that the annotation
  files are still those validated.

Importing this package is cheap: it does not import torch or detectron2.
"""

from __future__ import annotations

from spnas.data._fingerprint import check_fingerprint, dataset_fingerprint
from spnas.data._validate import check_annotations, check_images, validate_dataset
from spnas.data.bdd import BDD_CLASSES, BDD_IMAGE_SIZE, bdd_to_coco
from spnas.data.coco_layout import link_coco
from spnas.data.ecp import ECP_CLASSES, ECP_IGNORE_REGIONS, ECP_TIMES, ecp_to_coco
from spnas.data.synthetic import (
    DEFAULT_PROFILE,
    PROFILES,
    SHAPES,
    SyntheticDataset,
    SyntheticProfile,
    get_profile,
    make_synthetic_dataset,
)
from spnas.data.voc import VOC_CLASSES, parse_voc_sets, voc_to_coco

__all__ = [
    "BDD_CLASSES",
    "BDD_IMAGE_SIZE",
    "DEFAULT_PROFILE",
    "ECP_CLASSES",
    "ECP_IGNORE_REGIONS",
    "ECP_TIMES",
    "PROFILES",
    "SHAPES",
    "VOC_CLASSES",
    "SyntheticDataset",
    "SyntheticProfile",
    "bdd_to_coco",
    "check_annotations",
    "check_fingerprint",
    "check_images",
    "dataset_fingerprint",
    "ecp_to_coco",
    "get_profile",
    "link_coco",
    "make_synthetic_dataset",
    "parse_voc_sets",
    "validate_dataset",
    "voc_to_coco",
]
