"""A synthetic shapes-detection data set in COCO format.

The set is small enough to train on a CPU in minutes, yet hard enough that the backbone matters:
classes differ by outline *and* texture (a ``box`` and ``stripes`` share their outline, a ``disc``
and a ``ring`` differ only by a hole), colours come from overlapping palettes so colour alone does
not decide the class, objects span a decade of scales (6 px to half the image) and partly occlude
each other, and the background carries gradients, soft blobs, lines and noise that are not
annotated.

A :class:`SyntheticProfile` (the registry :data:`PROFILES`) sets the object sizes, counts,
classes and clutter. ``shapes``, the default, is the set described above. The benchmark
profiles were made to ask different things of a backbone: ``small-objects`` (8-20 shapes of
4-12 px) detail at strides 4-8, ``large-objects`` (1-3 shapes of 40-95 % of the image, classes
told apart by a thin-walled hole) receptive field. What each rewards is measured, not assumed:
``benchmarks/profiles.py`` retrains hand-made networks on both at equal training, and
``benchmarks/results/profiles.json`` holds the figures: at 300 detection iterations no
hand-made network beats the seed by more than its seed-to-seed spread on either; at 900
(``profiles-900.json``) the high-resolution layout beats it on ``small-objects`` by 5 times it.

Layout written by :func:`make_synthetic_dataset` under ``out_dir``::

    train.json  val.json            COCO detection json, one per split
    images/train/000001.png ...     RGB PNG, ``size`` x ``size``
    images/val/000001.png ...

``file_name`` in the json is relative to the image root ``out_dir/images`` (for example
``train/000001.png``), as detectron2's ``register_coco_instances(name, {}, json, image_root)``
expects. Image and annotation ids start at 1 in each split (pycocotools' evaluation treats id 0
as "unmatched").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from spnas.exceptions import DataError

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "SHAPES",
    "SyntheticDataset",
    "SyntheticProfile",
    "get_profile",
    "make_synthetic_dataset",
]

_logger = logging.getLogger(__name__)

#: Class names, in category-id order (id = position + 1). ``classes=K`` uses the first K.
SHAPES: tuple[str, ...] = (
    "disc",
    "box",
    "triangle",
    "ring",
    "cross",
    "stripes",
    "frame",
    "diamond",
)

_PALETTE = np.array(
    [
        (220, 45, 45),  # red
        (240, 140, 30),  # orange
        (225, 215, 50),  # yellow
        (50, 175, 65),  # green
        (40, 195, 205),  # cyan
        (45, 75, 220),  # blue
        (145, 60, 200),  # purple
        (230, 60, 160),  # magenta
    ],
    dtype=np.float64,
)
# Each palette entry is shared by three classes, so a colour narrows the class down without
# deciding it.
_CLASS_COLOURS: tuple[tuple[int, ...], ...] = tuple(
    (k, (k + 1) % len(_PALETTE), (k + 3) % len(_PALETTE)) for k in range(len(SHAPES))
)
_COLOUR_JITTER = 30.0

# Shapes are rasterised at this factor and box-filtered down, so small objects keep their
# outline (anti-aliased) instead of collapsing to blocky masks.
_SUPERSAMPLE = 4
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class SyntheticProfile:
    """The generator parameters of one kind of synthetic data set (see :data:`PROFILES`).

    Sizes are in pixels unless named a fraction (of the image side). Every range is drawn
    uniformly, object sides log-uniformly.

    Attributes:
        name: Registry key, written into the json ``info.description``.
        description: One line on what the profile is for.
        shapes: Class names in category-id order, a permutation of a subset of :data:`SHAPES`;
            ``classes=K`` uses the first K.
        min_long_side_px: Smallest longer object side.
        min_side_fraction: Smallest longer side as a fraction of the image side (the larger of
            the two minima applies).
        max_side_fraction: Largest longer side as a fraction of the image side.
        min_short_side_px: Smallest shorter side (capped by the longer side).
        max_aspect: Largest ratio of the longer to the shorter side.
        min_objects: Fewest objects drawn in one image (fewer survive when placement fails).
        max_objects: Most objects in one image unless ``make_synthetic_dataset(max_objects=)``.
        max_occluded: Largest fraction of an object a later one may hide.
        max_blobs: Most soft colour blobs in the background.
        max_lines: Most clutter lines in the background.
        wall_fraction: Range of the wall of a ``ring`` or ``frame``, as a fraction of its
            shorter side (at least 1.5 px).
        stripe_period: Range of the period of ``stripes``, in pixels.
    """

    name: str
    description: str
    shapes: tuple[str, ...] = SHAPES
    min_long_side_px: float = 6.0
    min_side_fraction: float = 0.05
    max_side_fraction: float = 0.5
    min_short_side_px: int = 5
    max_aspect: float = 2.0
    min_objects: int = 1
    max_objects: int = 6
    max_occluded: float = 0.6
    max_blobs: int = 4
    max_lines: int = 4
    wall_fraction: tuple[float, float] = (0.15, 0.3)
    stripe_period: tuple[float, float] = (3.0, 6.0)


# The shapes that differ from another only by a hole come first, so classes=4 asks for exactly
# that distinction.
_HOLE_PAIRS_FIRST = ("disc", "ring", "box", "frame", "triangle", "cross", "stripes", "diamond")

#: The registered profiles by name; :data:`DEFAULT_PROFILE` reproduces the original data set.
PROFILES: Mapping[str, SyntheticProfile] = MappingProxyType(
    {
        profile.name: profile
        for profile in (
            SyntheticProfile(
                name="shapes",
                description=(
                    "1-6 shapes of 6 px to half the image, partly occluded, on a cluttered "
                    "background (the original set)"
                ),
            ),
            SyntheticProfile(
                name="small-objects",
                description="8-20 tiny shapes (4-12 px at 128 px) an image, little occlusion",
                min_long_side_px=4.0,
                min_side_fraction=0.0,
                max_side_fraction=12 / 128,
                min_short_side_px=4,
                max_aspect=1.5,
                min_objects=8,
                max_objects=20,
                max_occluded=0.2,
            ),
            SyntheticProfile(
                name="large-objects",
                description=(
                    "1-3 large shapes (40-95 % of the image) an image, in pairs told apart only "
                    "by a thin-walled hole (disc/ring, box/frame)"
                ),
                shapes=_HOLE_PAIRS_FIRST,
                min_long_side_px=6.0,
                min_side_fraction=0.4,
                max_side_fraction=0.95,
                max_aspect=1.5,
                min_objects=1,
                max_objects=3,
                max_occluded=0.4,
                max_blobs=6,
                max_lines=8,
                wall_fraction=(0.06, 0.12),
                stripe_period=(10.0, 20.0),
            ),
        )
    }
)
DEFAULT_PROFILE = "shapes"


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`make_synthetic_dataset` wrote a data set, and what it holds.

    Attributes:
        root: ``out_dir``.
        train_json: COCO json of the training split.
        val_json: COCO json of the validation split.
        image_root: Directory the json ``file_name`` entries are relative to (``root/images``).
        class_names: Category names; category id ``i + 1`` is ``class_names[i]``.
        image_size: Side of the square images, in pixels.
        seed: Seed the set was generated from.
        num_train_images: Images in the training split.
        num_val_images: Images in the validation split.
        num_train_annotations: Boxes in the training split.
        num_val_annotations: Boxes in the validation split.
        profile: Name of the :class:`SyntheticProfile` it was drawn with.
    """

    root: Path
    train_json: Path
    val_json: Path
    image_root: Path
    class_names: tuple[str, ...]
    image_size: int
    seed: int
    num_train_images: int
    num_val_images: int
    num_train_annotations: int
    num_val_annotations: int
    profile: str = DEFAULT_PROFILE


def get_profile(name: str) -> SyntheticProfile:
    """The registered profile called ``name``.

    Raises:
        DataError: No profile has that name; the message lists the registered ones.
    """
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise DataError(f"profile: expected one of {', '.join(PROFILES)}, got {name!r}") from None


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    *,
    train: int = 200,
    val: int = 50,
    size: int = 128,
    classes: int = 4,
    max_objects: int | None = None,
    seed: int = 0,
    profile: str = DEFAULT_PROFILE,
    show_progress: bool = True,
) -> SyntheticDataset:
    """Draw a shapes-detection data set and write it in COCO format.

    See the module docstring for the files written; existing files of the same names are
    overwritten. Every image has its own random stream derived from ``(seed, split, index)``, so
    the output is byte-for-byte reproducible, train and val never share an image, and growing
    ``train`` keeps the images already generated.

    ``profile`` chooses the generator parameters (:data:`PROFILES`). With the default ``shapes``
    each image holds 1 to ``max_objects`` shapes, their longer side log-uniform between
    ``max(6, 0.05 * size)`` and ``size / 2`` pixels, the aspect ratio between 1:2 and 2:1. In
    every profile an object is placed only where it hides at most ``max_occluded`` of every object
    below it; boxes are the tight extent of the visible (uncovered) drawn pixels, and ``area`` is
    the visible pixel count, as COCO computes it from segment masks.

    Args:
        out_dir: Directory to write into; created if missing.
        train: Number of training images.
        val: Number of validation images.
        size: Side of the square images, in pixels (at least 32).
        classes: Number of categories, the first ``classes`` of the profile's shapes.
        max_objects: Most objects drawn in one image (at least the profile's ``min_objects``);
            ``None`` for the profile's.
        seed: Non-negative seed of the whole set.
        profile: Name of a registered :class:`SyntheticProfile`.
        show_progress: Show a tqdm progress bar.

    Returns:
        The paths written and the counts of images and boxes.

    Raises:
        DataError: An argument is out of range, ``profile`` is not registered, or ``out_dir`` is
            an existing file.
    """
    params = _checked_profile(profile, classes, max_objects)
    _check_int("train", train, 1)
    _check_int("val", val, 1)
    _check_int("size", size, 32)
    _check_int("seed", seed, 0)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"out_dir: expected a directory, got the existing file {str(root)!r}")

    counts = {}
    with tqdm(total=train + val, desc="synth", unit="img", disable=not show_progress) as bar:
        for split_code, (split, num_images) in enumerate((("train", train), ("val", val))):
            counts[split] = _write_split(
                root, split, split_code, num_images, size, seed, params, bar.update
            )

    dataset = SyntheticDataset(
        root=root,
        train_json=root / "train.json",
        val_json=root / "val.json",
        image_root=root / "images",
        class_names=params.shapes,
        image_size=size,
        seed=seed,
        num_train_images=train,
        num_val_images=val,
        num_train_annotations=counts["train"],
        num_val_annotations=counts["val"],
        profile=params.name,
    )
    _logger.info(
        "Wrote %d train images (%d boxes) and %d val images (%d boxes) of %d classes "
        "(profile %s) to %s",
        train,
        dataset.num_train_annotations,
        val,
        dataset.num_val_annotations,
        classes,
        params.name,
        root,
    )
    return dataset


def _checked_profile(name: str, classes: int, max_objects: int | None) -> SyntheticProfile:
    """The profile ``name`` narrowed to its first ``classes`` shapes and to ``max_objects``."""
    params = get_profile(name)
    if max_objects is None:
        max_objects = params.max_objects
    _check_int("classes", classes, 1, len(params.shapes))
    _check_int("max_objects", max_objects, params.min_objects)
    return dataclasses.replace(params, shapes=params.shapes[:classes], max_objects=max_objects)


def _write_split(
    root: Path,
    split: str,
    split_code: int,
    num_images: int,
    size: int,
    seed: int,
    params: SyntheticProfile,
    advance: Callable[[], object],
) -> int:
    """Draw and save one split's images, then write its json; return its number of boxes."""
    image_root = root / "images"
    (image_root / split).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_code, index)))
        pixels, objects = _draw_image(rng, size, params)
        image_id = index + 1
        file_name = f"{split}/{image_id:06d}.png"
        Image.fromarray(pixels).save(image_root / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for category, bbox, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
        advance()
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"}
        for k, name in enumerate(params.shapes)
    ]
    info = {
        "description": f"spnas synthetic {params.name}, {split} split",
        "version": "1",
        "seed": seed,
        "image_size": size,
    }
    _write_json(
        root / f"{split}.json",
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        },
    )
    return len(annotations)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    # bool is an int subclass, but `train=True` is a mistake, not a count of 1.
    if (
        not isinstance(value, int | np.integer)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        raise DataError(f"{name}: expected {expected}, got {value!r}")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # Written last and renamed into place, so a json on disk means its images are complete.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")))
    os.replace(tmp, path)


def _draw_image(
    rng: np.random.Generator, size: int, params: SyntheticProfile
) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """Return the ``uint8`` image and its objects as ``(class index, [x, y, w, h], area)``."""
    canvas = _background(rng, size, params)
    categories: list[int] = []
    # Full-image masks of the still-visible pixels of every placed object.
    visible: list[np.ndarray] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(params.min_objects, params.max_objects + 1))):
        category = int(rng.integers(len(params.shapes)))
        shape = params.shapes[category]
        w, h = _sample_extent(rng, size, params)
        alpha = _shape_alpha(shape, w, h, rng, params.wall_fraction)
        solid = alpha >= 0.5
        origin = _find_place(rng, size, solid, visible, full_areas, params.max_occluded)
        if origin is None:
            continue
        x0, y0 = origin
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        a = alpha[..., None]
        canvas[window] = (
            canvas[window] * (1.0 - a) + _texture(shape, w, h, rng, params.stripe_period) * a
        )
        for mask in visible:
            mask[window] &= ~solid
        mask = np.zeros((size, size), dtype=bool)
        mask[window] = solid
        visible.append(mask)
        full_areas.append(int(np.count_nonzero(solid)))
        categories.append(category)

    canvas += rng.normal(0.0, rng.uniform(2.0, 8.0), canvas.shape)
    pixels = np.rint(np.clip(canvas, 0.0, 255.0)).astype(np.uint8)
    objects = [
        (category, _tight_box(mask), int(np.count_nonzero(mask)))
        for category, mask in zip(categories, visible, strict=True)
    ]
    return pixels, objects


def _background(rng: np.random.Generator, size: int, params: SyntheticProfile) -> np.ndarray:
    """A greyish gradient with soft colour blobs and opaque lines, as a float HxWx3 array."""
    grey = rng.uniform(50.0, 190.0)
    start = grey + rng.uniform(-30.0, 30.0, 3)
    stop = grey + rng.uniform(-60.0, 60.0, 3)
    ramp = _ramp(size, size, rng.uniform(0.0, 2.0 * math.pi)) + 0.5
    canvas = start + (stop - start) * ramp[..., None]

    coords = np.arange(size, dtype=np.float64)
    for _ in range(int(rng.integers(0, params.max_blobs + 1))):
        cx, cy = rng.uniform(0.0, size, 2)
        sigma = rng.uniform(0.05, 0.25) * size
        gx = np.exp(-0.5 * ((coords - cx) / sigma) ** 2)
        gy = np.exp(-0.5 * ((coords - cy) / sigma) ** 2)
        canvas += np.outer(gy, gx)[..., None] * rng.uniform(-50.0, 50.0, 3)

    # Lines use the objects' palette, so a detector cannot tell objects from clutter by colour.
    image = Image.fromarray(np.rint(np.clip(canvas, 0.0, 255.0)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, params.max_lines + 1))):
        ends = rng.uniform(-0.1 * size, 1.1 * size, 4)
        colour = _PALETTE[rng.integers(len(_PALETTE))] + rng.uniform(
            -_COLOUR_JITTER, _COLOUR_JITTER, 3
        )
        draw.line(
            [(ends[0], ends[1]), (ends[2], ends[3])],
            fill=tuple(int(c) for c in np.clip(colour, 0, 255)),
            width=int(rng.integers(1, 3)),
        )
    return np.array(image, dtype=np.float64)


def _ramp(width: int, height: int, angle: float) -> np.ndarray:
    """Linear ramp in ``[-0.5, 0.5]`` along ``angle``, shape ``(height, width)``."""
    x = np.linspace(-0.5, 0.5, width)
    y = np.linspace(-0.5, 0.5, height)
    ramp = np.cos(angle) * x[None, :] + np.sin(angle) * y[:, None]
    extent = abs(math.cos(angle)) + abs(math.sin(angle))
    return ramp / extent


def _sample_extent(
    rng: np.random.Generator, size: int, params: SyntheticProfile
) -> tuple[int, int]:
    low = max(params.min_long_side_px, params.min_side_fraction * size)
    high = params.max_side_fraction * size
    long_side = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    short_side = round(long_side / rng.uniform(1.0, params.max_aspect))
    short_side = max(short_side, min(long_side, params.min_short_side_px))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _shape_alpha(
    shape: str, w: int, h: int, rng: np.random.Generator, wall_fraction: tuple[float, float]
) -> np.ndarray:
    """Coverage in ``[0, 1]`` of a shape whose extent is the whole ``h`` x ``w`` patch."""
    s = _SUPERSAMPLE
    width, height = w * s, h * s
    right, bottom = width - 1, height - 1
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if shape in ("disc", "ring"):
        draw.ellipse((0, 0, right, bottom), fill=255)
    elif shape in ("box", "stripes", "frame"):
        draw.rectangle((0, 0, right, bottom), fill=255)
    elif shape == "triangle":
        # Apex anywhere along one side, pointing in one of four directions.
        points = [(rng.uniform(0.15, 0.85), 0.0), (0.0, 1.0), (1.0, 1.0)]
        orientation = int(rng.integers(4))
        if orientation & 1:
            points = [(u, 1.0 - v) for u, v in points]
        if orientation & 2:
            points = [(v, u) for u, v in points]
        draw.polygon([(u * right, v * bottom) for u, v in points], fill=255)
    elif shape == "cross":
        fraction = rng.uniform(0.28, 0.42)
        bar_h = max(fraction * height, 1.5 * s)
        bar_w = max(fraction * width, 1.5 * s)
        draw.rectangle(
            (0, round((bottom - bar_h) / 2), right, round((bottom + bar_h) / 2)), fill=255
        )
        draw.rectangle(
            (round((right - bar_w) / 2), 0, round((right + bar_w) / 2), bottom), fill=255
        )
    elif shape == "diamond":
        draw.polygon(
            [(right / 2, 0), (right, bottom / 2), (right / 2, bottom), (0, bottom / 2)], fill=255
        )
    else:  # pragma: no cover - SHAPES and this function change together
        raise AssertionError(f"no drawing for shape {shape!r}")

    if shape in ("ring", "frame"):
        # At least 1.5 px of wall, so the hole of a tiny ring still reads as a hole.
        wall = round(max(rng.uniform(*wall_fraction) * min(width, height), 1.5 * s))
        if right - 2 * wall > 0 and bottom - 2 * wall > 0:
            hole = (wall, wall, right - wall, bottom - wall)
            if shape == "ring":
                draw.ellipse(hole, fill=0)
            else:
                draw.rectangle(hole, fill=0)
    return np.asarray(image.reduce(s), dtype=np.float32) / 255.0


def _texture(
    shape: str, w: int, h: int, rng: np.random.Generator, stripe_period: tuple[float, float]
) -> np.ndarray:
    """The object's colours as a float HxWx3 array: one shaded palette colour, or two in stripes."""
    # Colours follow the shape, not the category id, so a shape looks alike in every profile.
    choices = _CLASS_COLOURS[SHAPES.index(shape)]
    first = int(rng.choice(choices))
    colour = _PALETTE[first] + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3)
    shading = 1.0 + rng.uniform(0.0, 0.4) * _ramp(w, h, rng.uniform(0.0, 2.0 * math.pi))
    texture = colour * shading[..., None]
    if shape == "stripes":
        second = int(rng.choice([c for c in choices if c != first]))
        other = _PALETTE[second] + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3)
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(*stripe_period)
        phase = np.cos(angle) * np.arange(w)[None, :] + np.sin(angle) * np.arange(h)[:, None]
        texture = np.where(
            ((phase / period) % 1.0 < 0.5)[..., None], texture, other * shading[..., None]
        )
    return np.clip(texture, 0.0, 255.0)


def _find_place(
    rng: np.random.Generator,
    size: int,
    solid: np.ndarray,
    visible: list[np.ndarray],
    full_areas: list[int],
    max_occluded: float,
) -> tuple[int, int] | None:
    """Top-left corner where ``solid`` fits inside the image without over-occluding anything."""
    h, w = solid.shape
    for _ in range(_PLACEMENT_TRIES):
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        if all(
            np.count_nonzero(mask) - np.count_nonzero(mask[y0 : y0 + h, x0 : x0 + w] & solid)
            >= (1.0 - max_occluded) * full_area
            for mask, full_area in zip(visible, full_areas, strict=True)
        ):
            return x0, y0
    return None


def _tight_box(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1]
