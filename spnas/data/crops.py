"""Object crops: a classification data set made from a detection training set.

Reignition (docs/design.md §2) pretrains a backbone on classification. When no ImageFolder (ImageNet)
is given, each annotated box becomes one example: the box, padded by a margin so the object's
outline and some context stay visible, cropped and resized to a square, labelled by its
category.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from spnas.data.coco import CocoDataset
from spnas.data.normalization import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from spnas.exceptions import DataError


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image → a normalised ``3×H×W`` float tensor (see ``normalization``)."""
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = array.view(image.height, image.width, 3).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD_RGB).view(3, 1, 1)
    return (tensor - mean) / std


class ObjectCrops(Dataset):
    """Square crops of every non-crowd box, labelled ``0..K-1`` in category order.

    Args:
        dataset: a validated COCO split.
        size: side of the square crops in pixels.
        padding: margin added on each side, as a fraction of the box's longer side.
        flip: randomly mirror crops (training augmentation).
        cache_images: keep decoded images in memory (small data sets; avoids re-decoding an
            image once per box).
    """

    def __init__(
        self,
        dataset: CocoDataset,
        size: int = 64,
        padding: float = 0.15,
        flip: bool = False,
        cache_images: bool = True,
    ) -> None:
        self.dataset = dataset
        self.size = size
        self.padding = padding
        self.flip = flip
        self.label_of = dataset.contiguous_label()
        self.items: list[tuple[Path, tuple[float, float, float, float], int]] = [
            (img.path, box, self.label_of[cid])
            for img in dataset.images
            for box, cid, crowd in zip(img.boxes, img.category_ids, img.iscrowd, strict=True)
            if not crowd
        ]
        if not self.items:
            raise DataError(
                f"annotation file {str(dataset.json_path)!r} has no non-crowd boxes to crop"
            )
        self._cache: dict[Path, Image.Image] | None = {} if cache_images else None

    @property
    def num_classes(self) -> int:
        return len(self.label_of)

    def _open(self, path: Path) -> Image.Image:
        if self._cache is not None and path in self._cache:
            return self._cache[path]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as exc:
            raise DataError(f"image {str(path)!r} could not be read: {exc}") from exc
        if self._cache is not None:
            self._cache[path] = rgb
        return rgb

    def __len__(self) -> int:
        return len(self.items)

    def crop_box(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """The padded, square crop window around ``box`` (may extend past the image)."""
        x, y, w, h = box
        side = max(w, h) * (1 + 2 * self.padding)
        cx, cy = x + w / 2, y + h / 2
        half = side / 2
        return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, box, label = self.items[index]
        # PIL pads a window that leaves the image with black, which keeps the aspect ratio.
        crop = self._open(path).crop(self.crop_box(box))
        crop = crop.resize((self.size, self.size), Image.BILINEAR)
        if self.flip and torch.rand(()) < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(crop), label
