"""The torchvision engine: Faster R-CNN + FPN over an SPNet backbone (docs/design.md §5).

The second engine, for machines where detectron2 cannot be installed. The detector is
torchvision's :class:`~torchvision.models.detection.FasterRCNN` with :class:`SPNetFPN` as its
backbone, so state-dict keys are::

    backbone.body.<SPNet keys>                 (stem.*, res2.0.conv1.weight, res3_p1.*, …)
    backbone.fpn.inner_blocks.{i}.0.weight     lateral 1×1 convs, one per stage
    backbone.fpn.layer_blocks.{i}.0.weight     output 3×3 convs
    rpn.*, roi_heads.*                         heads

which is what weight inheritance (:mod:`spnas.morphism`) expects: a new stage's lateral conv
``inner_blocks.{i}`` starts at zero there, so the child detector computes its parent's function.

FPN levels are one per stage (``res2 … res{S+1}``, strides 4 … 2^(S+1)) plus a max-pooled level
on top, as detectron2's ``LastLevelMaxPool``: 5–8 levels for the search space's 4–7 stages.
Anchors are ``spec.anchor_size`` at the stride-4 level and double per level, with aspect ratios
0.5, 1, 2 everywhere. RoIAlign pools from the stage levels (not the pool level), as detectron2.

Images are padded to a multiple of 32 (torchvision's default), not of the deepest stride:
the FPN upsamples to each level's exact size, so 5–7-stage backbones work without padding small
images to 256 px.

The heads default to torchvision's (and detectron2's) sizes; :class:`TorchvisionEngine` takes
``FasterRCNN`` options to scale them down for CPU runs.

Images enter the model as ``[0, 1]`` RGB tensors; the model's transform normalises them with
the ImageNet statistics of :mod:`spnas.data.normalization` (rescaled to ``[0, 1]``), so the
backbone sees what classification pretraining (:mod:`spnas.pretrain`) showed it.

Modules, one job each:

- :mod:`~.fpn`: :class:`SPNetFPN`, the backbone torchvision's detectors take;
- :mod:`~.geometry`: anchors and RoIAlign computed as detectron2 computes them;
- :mod:`~.layout`: :class:`FasterRCNNLayout`, everything but the weights that defines a
  detector;
- :mod:`~.builder`: :func:`build_faster_rcnn`, a detector from a layout;
- :mod:`~.serialization`: :func:`save_detector` / :func:`load_detector`, the one-file format
  of exported detectors;
- :mod:`~.training`, :mod:`~.evaluation`: one training run and COCO evaluation;
- :mod:`~.engine`: :class:`TorchvisionEngine`, the engine contract over the above.

The API below loads on first use, so importing this package imports no torchvision.
"""

from __future__ import annotations

from spnas._lazy import lazy_getattr

_API = {
    "SPNetFPN": "fpn",
    "AlignedMultiScaleRoIAlign": "geometry",
    "UnroundedAnchorGenerator": "geometry",
    "ASPECT_RATIOS": "layout",
    "FasterRCNNLayout": "layout",
    "build_faster_rcnn": "builder",
    "DETECTOR_FORMAT": "serialization",
    "load_detector": "serialization",
    "save_detector": "serialization",
    "TorchvisionEngine": "engine",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
