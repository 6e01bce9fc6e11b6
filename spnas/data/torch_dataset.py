"""A torch :class:`~torch.utils.data.Dataset` over a validated COCO split, for detection.

Each item is what torchvision's detection models take: an RGB image as a ``3×H×W`` float
tensor in ``[0, 1]`` (the models normalise internally, with the statistics of
:mod:`spnas.data.normalization` passed as ``image_mean``/``image_std``) and a target dict::

    {"boxes": float32 [N, 4] xyxy pixels, "labels": int64 [N] in 1..K, "image_id": int}

Labels are 1-based in category order (0 is the background class in torchvision's heads);
:meth:`DetectionDataset.category_id` maps a label back to the COCO category id. Crowd boxes
(``iscrowd=1``) are left out of targets: they mark regions not to be learned as single objects.
Images without boxes give ``[0, 4]`` boxes, which torchvision's Faster R-CNN trains on as
background.

Batches are tuples of lists (:func:`collate`), because images of a batch may differ in size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from spnas.data.coco import CocoDataset, CocoImage
from spnas.exceptions import DataError

#: A detection target as torchvision's detection models take it.
Target = dict[str, Any]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image → a ``3×H×W`` float tensor in ``[0, 1]``."""
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return array.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)


class DetectionDataset(Dataset):
    """Images and detection targets of a COCO split.

    Args:
        dataset: a validated COCO split (:func:`spnas.data.coco.load_coco`).
        train: training mode: images are mirrored horizontally with probability
            ``flip_prob`` (boxes mirrored with them).
        flip_prob: probability of the horizontal flip in training mode.
        cache_images: keep decoded images in memory (small data sets; each DataLoader worker
            holds its own cache).
    """

    def __init__(
        self,
        dataset: CocoDataset,
        train: bool,
        flip_prob: float = 0.5,
        cache_images: bool = False,
    ) -> None:
        self.dataset = dataset
        self.train = train
        self.flip_prob = flip_prob
        label_of = dataset.contiguous_label()
        # torchvision reserves label 0 for the background.
        self.label_of: dict[int, int] = {cid: index + 1 for cid, index in label_of.items()}
        self._category_of: tuple[int, ...] = dataset.category_ids
        self._cache: dict[int, torch.Tensor] | None = {} if cache_images else None

    @property
    def num_classes(self) -> int:
        """Foreground classes (labels run ``1..num_classes``)."""
        return len(self._category_of)

    def category_id(self, label: int) -> int:
        """The COCO category id of a 1-based label."""
        return self._category_of[label - 1]

    def __len__(self) -> int:
        return len(self.dataset.images)

    def _load(self, index: int, image: CocoImage) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        try:
            with Image.open(image.path) as pil:
                tensor = _to_tensor(pil.convert("RGB"))
        except OSError as exc:
            raise DataError(f"image {str(image.path)!r} could not be read: {exc}") from exc
        if tensor.shape[1:] != (image.height, image.width):
            # Boxes are validated against the json's size; a different file would misplace them.
            raise DataError(
                f"image {str(image.path)!r} is {tensor.shape[2]}x{tensor.shape[1]} pixels, but "
                f"{str(self.dataset.json_path)!r} says {image.width}x{image.height} "
                f"(image_id {image.id})"
            )
        if self._cache is not None:
            self._cache[index] = tensor
        return tensor

    def target(self, image: CocoImage) -> Target:
        """The target of ``image`` (unflipped): non-crowd, non-degenerate boxes in xyxy."""
        boxes: list[list[float]] = []
        labels: list[int] = []
        for (x, y, w, h), cid, crowd in zip(
            image.boxes, image.category_ids, image.iscrowd, strict=True
        ):
            # Clipping in load_coco may leave a sliver of a box that overhung the image by
            # less than the tolerance; torchvision rejects boxes without positive area.
            if crowd or w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[cid])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image.id,
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = self.dataset.images[index]
        tensor = self._load(index, image)
        target = self.target(image)
        if self.train and self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            tensor = tensor.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = image.width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return tensor, target


def collate(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """``[(image, target), …]`` → ``([images], [targets])``; images keep their own sizes."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
