"""The learning-rate curve shared by detection trials and classification pretraining."""

from __future__ import annotations

import math

__all__ = ["cosine_lr"]


def cosine_lr(step: int, total: int, start: float, end: float) -> float:
    """The learning rate at ``step`` of ``total`` on half a cosine from ``start`` to ``end``.

    ``step`` past ``total`` stays at ``end``; ``total`` 0 counts as 1.
    """
    progress = min(step / max(total, 1), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))
