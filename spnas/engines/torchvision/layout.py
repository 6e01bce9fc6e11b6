"""The layout of a torchvision Faster R-CNN over an SPNet: everything but its weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from spnas.engines._types import ModelSpec
from spnas.exceptions import ConfigError

__all__ = ["ASPECT_RATIOS", "FasterRCNNLayout", "check_detector_options"]

#: Aspect ratios of the anchors at every level (detectron2's and torchvision's default).
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)

#: ``FasterRCNN`` arguments that :func:`~spnas.engines.torchvision.build_faster_rcnn` sets
#: from the layout.
RESERVED_OPTIONS = frozenset(
    {
        "backbone",
        "num_classes",
        "min_size",
        "max_size",
        "image_mean",
        "image_std",
        "size_divisible",
        "rpn_anchor_generator",
        "rpn_head",
        "box_roi_pool",
        "box_head",
        "box_predictor",
    }
)


def check_detector_options(options: Mapping[str, Any], where: str) -> None:
    """Check further ``FasterRCNN`` keyword arguments: numbers, none that the layout sets.

    Raises:
        ConfigError: naming the option and ``where`` it is set from.
    """
    clash = RESERVED_OPTIONS & set(options)
    if clash:
        raise ConfigError(f"detector option {sorted(clash)[0]!r} is set {where}, not as an option")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"detector option {key!r}={value!r}: expected a number (modules are built "
                "from the layout)"
            )


@dataclasses.dataclass(frozen=True)
class FasterRCNNLayout:
    """Everything but the weights that defines a torchvision Faster R-CNN over an SPNet.

    The engine builds its detectors from a layout (:meth:`TorchvisionEngine.layout`), and an
    exported detector carries its own (:func:`save_detector`), so :func:`load_detector`
    rebuilds it in a process that has spnas and torchvision and nothing else.

    Attributes:
        spec: backbone, FPN width and class count (``spec.anchor_size`` is not used: the
            anchors are ``anchor_sizes``).
        anchor_sizes: anchor sizes of each FPN level, finest first: one tuple per stage plus
            one for the max-pooled level.
        aspect_ratios: anchor aspect ratios (height / width), the same at every level.
        representation_size: width of the box head's two hidden FC layers.
        min_size, max_size: the transform's image resizing.
        size_divisible: images are padded to a multiple of this.
        sampling_ratio: RoIAlign's sampling points per bin (0: adaptive, as detectron2).
        canonical_box_size: the box side (px) pooled from level 4 (``MultiScaleRoIAlign``'s
            ``canonical_scale``); boxes twice as large go one level up. 224, torchvision's
            default, suits 800 px images; :meth:`TorchvisionEngine.layout` scales it with
            ``min_size`` (:func:`spnas.engines._roi.canonical_box_size`). Layouts saved
            before this field existed load with 224, which their detectors were trained with.
        detectron2_geometry: anchors and RoIAlign as detectron2 computes them
            (:class:`UnroundedAnchorGenerator`, :class:`AlignedMultiScaleRoIAlign`), for
            detectors converted from detectron2; torchvision's own otherwise.
        options: further keyword arguments of torchvision's ``FasterRCNN`` (numbers only:
            ``rpn_pre_nms_top_n_test``, ``box_score_thresh``, …).
    """

    spec: ModelSpec
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS
    representation_size: int = 1024
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    sampling_ratio: int = 2
    canonical_box_size: float = 224.0
    detectron2_geometry: bool = False
    options: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        levels = self.spec.arch.num_stages + 1
        if len(self.anchor_sizes) != levels:
            raise ConfigError(
                f"anchor_sizes has {len(self.anchor_sizes)} levels, expected {levels} for "
                f"{self.spec.arch} (one per stage plus the max-pooled level)"
            )
        check_detector_options(self.options, "by the layout")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` inverts it."""
        values = dataclasses.asdict(self)
        values["spec"] = self.spec.to_dict()
        values["options"] = dict(self.options)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FasterRCNNLayout:
        values = dict(values)
        values["spec"] = ModelSpec(**values["spec"])
        values["anchor_sizes"] = tuple(tuple(sizes) for sizes in values["anchor_sizes"])
        values["aspect_ratios"] = tuple(values["aspect_ratios"])
        return cls(**values)
