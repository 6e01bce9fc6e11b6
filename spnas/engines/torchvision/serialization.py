"""The one-file format of exported torchvision detectors: layout (JSON) and state dict.

A file that :func:`save_detector` wrote is read with ``torch.load(weights_only=True)``, and
:func:`load_detector` rebuilds the detector from it in a process that has spnas and
torchvision and nothing else.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torchvision.models.detection import FasterRCNN

from spnas._io import atomic_write, load_tensor_file
from spnas.engines.torchvision.builder import build_faster_rcnn
from spnas.engines.torchvision.layout import FasterRCNNLayout
from spnas.exceptions import WeightsError

__all__ = ["DETECTOR_FORMAT", "load_detector", "save_detector"]

#: ``format`` entry of the files :func:`save_detector` writes.
DETECTOR_FORMAT = "spnas.torchvision.FasterRCNN/1"


def save_detector(
    state_dict: Mapping[str, torch.Tensor], layout: FasterRCNNLayout, path: Path
) -> Path:
    """Write a detector as one file: its layout (JSON) and its state dict.

    The file is read with ``torch.load(weights_only=True)``; :func:`load_detector` rebuilds
    the model from it.
    """
    saved = {
        "format": DETECTOR_FORMAT,
        "layout": json.dumps(layout.to_dict()),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    return atomic_write(path, functools.partial(torch.save, saved))


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> FasterRCNN:
    """The torchvision Faster R-CNN that :func:`save_detector` (or ``spnas export``) wrote,
    in eval mode.

    Raises:
        WeightsError: naming the file when it is missing, truncated, or not such a detector.
    """
    path = Path(path)
    saved = load_tensor_file(path, "detector file", map_location)
    if not isinstance(saved, dict) or saved.get("format") != DETECTOR_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise WeightsError(
            f"detector file {str(path)!r} has format {found!r}, expected {DETECTOR_FORMAT!r} "
            "(written by `spnas export`)"
        )
    model = build_faster_rcnn(FasterRCNNLayout.from_dict(json.loads(saved["layout"])))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"detector file {str(path)!r}: {exc}") from exc
    return model.eval()
