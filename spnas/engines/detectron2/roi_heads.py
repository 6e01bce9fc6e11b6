"""ROI heads whose pooler's canonical box follows the input size, in ``ROI_HEADS_REGISTRY``.

detectron2's :class:`ROIPooler` takes ``canonical_box_size`` and ``canonical_level``, but
``StandardROIHeads`` never passes them, so every detector pools a 224 px box from ``p4``
whatever its image size. At 128 px that sends all boxes under 112 px to ``p2`` (see
:mod:`spnas.engines._roi`). :class:`InputScaledROIHeads` is ``StandardROIHeads`` with a
pooler scaled to the input: select it with ``MODEL.ROI_HEADS.NAME: "InputScaledROIHeads"``
(the shipped configs do) and set the size with ``MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE``
(0, the default, follows ``INPUT.MIN_SIZE_TEST``).
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler

from spnas.engines._roi import CANONICAL_LEVEL, canonical_box_size

__all__ = ["InputScaledROIHeads", "pooler_canonical_box_size"]


def pooler_canonical_box_size(cfg: CfgNode) -> float:
    """The canonical box side (px) of ``cfg``'s box pooler.

    ``MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE``, or ``224 × INPUT.MIN_SIZE_TEST / 800`` when it
    is 0 or absent (a config exported by spnas read by stock detectron2 code).
    """
    configured = cfg.MODEL.ROI_BOX_HEAD.get("CANONICAL_BOX_SIZE", 0)
    return canonical_box_size(cfg.INPUT.MIN_SIZE_TEST, configured)


@ROI_HEADS_REGISTRY.register()
class InputScaledROIHeads(StandardROIHeads):
    """detectron2's ``StandardROIHeads`` whose box pooler maps boxes to FPN levels relative
    to the image size (:func:`pooler_canonical_box_size`, on level 4).

    Only the box pooler differs; the weights are ``StandardROIHeads``' (same names), so a
    checkpoint of either loads into the other.
    """

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, Any]) -> dict[str, Any]:
        ret = super()._init_box_head(cfg, input_shape)
        head = cfg.MODEL.ROI_BOX_HEAD
        ret["box_pooler"] = ROIPooler(
            output_size=head.POOLER_RESOLUTION,
            scales=tuple(1.0 / input_shape[k].stride for k in ret["box_in_features"]),
            sampling_ratio=head.POOLER_SAMPLING_RATIO,
            pooler_type=head.POOLER_TYPE,
            canonical_box_size=pooler_canonical_box_size(cfg),
            canonical_level=CANONICAL_LEVEL,
        )
        return ret
