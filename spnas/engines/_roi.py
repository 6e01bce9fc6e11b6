"""Which FPN level a region of interest is pooled from, for images of any size.

Both engines map a box of side ``s`` (``sqrt(area)``) to level
``floor(CANONICAL_LEVEL + log2(s / canonical))``, clamped to the levels the detector has
(eq. 1 of the FPN paper; detectron2's ``assign_boxes_to_levels``, torchvision's
``LevelMapper``). Their default canonical box, 224 px on level 4, was chosen for
ImageNet-sized objects in 800 px COCO images. In the 64–128 px images of CPU searches every
box under ``224 / 2 = 112`` px goes to ``p2``, so deeper stages reach the box head only
through the FPN's top-down path and a search cannot reward them.

The canonical box therefore follows the image: ``224 × min_size / 800``. Resizing an image
resizes its objects by the same factor, so an object is pooled from the level it would be at
800 px; at 800 px the rule is the libraries' default.
"""

from __future__ import annotations

import math

from spnas.exceptions import ConfigError

__all__ = ["CANONICAL_LEVEL", "canonical_box_size"]

#: The level a canonical box is pooled from (both libraries' default).
CANONICAL_LEVEL = 4
#: The libraries' canonical box (px) and the image size (shorter side) it was chosen for.
_REFERENCE_BOX, _REFERENCE_MIN_SIZE = 224.0, 800


def canonical_box_size(min_size: int, configured: float = 0) -> float:
    """The canonical box side (px) for images resized to a shorter side of ``min_size``.

    Args:
        min_size: the test-time shorter image side (``INPUT.MIN_SIZE_TEST``, ``Schedule``'s
            ``min_size``).
        configured: a fixed size that overrides the rule; ``0`` follows the input.

    Raises:
        ConfigError: for a negative or non-finite ``configured``, or a ``min_size`` that is
            not positive when the rule needs it.
    """
    if not math.isfinite(configured) or configured < 0:
        raise ConfigError(
            f"MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE is {configured!r}, expected 0 (follow the "
            "input size) or a box side in pixels"
        )
    if configured:
        return float(configured)
    if min_size <= 0:
        raise ConfigError(
            f"the test image size is {min_size!r}, expected a positive shorter side to scale "
            "the ROI pooler's canonical box with"
        )
    return _REFERENCE_BOX * min_size / _REFERENCE_MIN_SIZE
