"""Detection data sets for spnas.

Every data set ends up as COCO-format json plus an image root, which both engines read:

- :func:`make_synthetic_dataset` draws a small shapes-detection set, so that searches, tests and
  demos run on a laptop with nothing downloaded.

Importing this package is cheap: it does not import torch or detectron2.
"""

from __future__ import annotations

from spnas.data.synthetic import SHAPES, SyntheticDataset, make_synthetic_dataset

__all__ = ["SHAPES", "SyntheticDataset", "make_synthetic_dataset"]
