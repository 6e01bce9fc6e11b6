"""Pixel normalisation shared by classification pretraining and both detection engines.

Backbones see RGB images normalised with ImageNet statistics, whichever engine trains them:
a network pretrained here and fine-tuned by detectron2 (``INPUT.FORMAT = "RGB"``,
``PIXEL_MEAN``/``PIXEL_STD`` below on the 0–255 scale) sees the same input distribution, and
so do torchvision's pretrained ResNets.
"""

from __future__ import annotations

#: Per-channel mean and standard deviation of RGB images on the 0–255 scale.
PIXEL_MEAN_RGB: tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD_RGB: tuple[float, float, float] = (58.395, 57.12, 57.375)
