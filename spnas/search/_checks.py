"""Checks of a study configuration's values, and of its seed network's size, before a study
is created.

The section dataclasses of :mod:`spnas.search._config` check keys and types; this module checks
ranges, names and consistency, so that a value no trial could run with (a negative learning
rate, an unknown norm, an ``XB`` width its groups do not divide, a seed network too big for
the machine) is refused with its key named instead of failing the seed trial three times.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from spnas.exceptions import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
#: Study names become folder names (``runs/<name>``): no separators or control characters.
_NAME = re.compile(r"^[^/\\\x00-\x1f]+$")
#: What training keeps per feature map value, as multiples of the forward activations (the
#: outputs of conv, norm and ReLU are all kept for the backward pass).
_ACTIVATION_COPIES = 3
#: Float32 parameter copies while training: weights, gradients, SGD momentum, one spare.
_PARAMETER_COPIES = 4
#: The estimate is rough (workspace and caching left out): a network is refused only
#: when it needs this many times the memory there is, which no estimate error explains.
_MARGIN = 2.0
#: The detector's heads as both engines build them by default (detectron2's and torchvision's
#: Faster R-CNN): RoIs sampled per training image, the box head's FC width and pooled size,
#: anchors per location. The box predictor scales with the classes: ``cls_score`` has
#: ``classes + 1`` outputs, ``bbox_pred`` four per class.
_ROIS_PER_IMAGE = 512
_BOX_HEAD_DIM = 1024
_POOLED = 7
_ANCHORS = 3


def _positive(value: Any) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _non_negative(value: Any) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model.width", _positive, "a positive integer"),
    ("model.xb_groups", _positive, "a positive integer"),
    ("model.fpn_channels", _positive, "a positive integer"),
    ("model.anchor_size", _positive, "a positive integer"),
    ("serial.max_trials", lambda v: v is None or v >= 1, "null or an integer ≥ 1"),
    ("parallel.budget_gmacs", lambda v: v is None or _positive(v), "null or a positive number"),
    ("parallel.budget_ratio", lambda v: v is None or _positive(v), "null or a positive number"),
    ("parallel.max_tries", _positive, "a positive integer"),
    # 0 skips the parallel phase's candidates (its seed and control still run).
    ("parallel.max_trials", lambda v: v is None or v >= 0, "null or an integer ≥ 0"),
    ("reignite.epochs", _positive, "a positive integer"),
    ("reignite.image_size", lambda v: v >= 8, "an integer ≥ 8"),
    ("reignite.lr", lambda v: v is None or _positive(v), "null or a positive number"),
    ("reignite.batch_size", _positive, "a positive integer"),
    ("search.keep_top_k", _positive, "a positive integer"),
    ("search.wait_seconds", _positive, "a positive number of seconds"),
    ("search.max_barrier_attempts", _positive, "a positive integer"),
)

_SCHEDULE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("base_lr", _positive, "a positive number"),
    ("min_lr", _non_negative, "a number ≥ 0"),
    ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("weight_decay", _non_negative, "a number ≥ 0"),
    ("warmup_iters", _non_negative, "an integer ≥ 0"),
    ("eval_period", _non_negative, "an integer ≥ 0"),
    ("min_size", _positive, "a positive integer"),
    ("max_size", _positive, "a positive integer"),
    ("num_workers", _non_negative, "an integer ≥ 0"),
    ("device", lambda v: bool(_DEVICE.match(v)), "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("steps", lambda v: all(0 < s < 1 for s in v), "fractions of training in (0, 1)"),
)

_SYNTHETIC_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("train", _positive, "a positive integer"),
    ("val", _positive, "a positive integer"),
    ("size", lambda v: v >= 16, "an integer ≥ 16"),
    ("classes", _positive, "a positive integer"),
    (
        "max_objects",
        lambda v: v is None or _positive(v),
        "a positive integer or null (the profile's)",
    ),
)


def _value(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _refuse(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"'{key}' is {value!r}, expected {expected}")


def check_values(config: Any) -> None:
    """Check every value of ``config`` (a :class:`~spnas.search.SearchConfig`) for range,
    name and consistency.

    Raises:
        ConfigError: naming the first bad key, its value and what was expected.
    """
    from spnas.modeling.norm import NORMS
    from spnas.modeling.stems import STEMS
    from spnas.morphism import check_op_weights

    name = config.study.name
    if not _NAME.match(name) or name != name.strip() or name in (".", ".."):
        raise _refuse(
            "study.name", name, "a name without '/', '\\', control characters or edge spaces"
        )
    for key, valid, expected in _RULES:
        value = _value(config, key)
        if not valid(value):
            raise _refuse(key, value, expected)
    if config.model.norm not in NORMS:
        raise _refuse("model.norm", config.model.norm, f"one of {', '.join(NORMS)}")
    if config.model.stem not in STEMS:
        raise _refuse("model.stem", config.model.stem, f"one of {', '.join(STEMS)}")
    groups, width = config.model.xb_groups, config.model.width
    if config.seed_arch.block == "XB" and (2 * width) % groups:
        raise ConfigError(
            f"'model.xb_groups' is {groups}: an XB block of 'model.width' {width} has "
            f"{2 * width} inner channels, which {groups} groups do not divide; choose a width "
            f"with 2·width a multiple of {groups}, or fewer groups"
        )
    if config.serial.op_weights is not None:
        try:
            check_op_weights(config.serial.op_weights)
        except ConfigError as exc:
            raise ConfigError(f"'serial.op_weights': {exc}") from None
    for section, schedule in (("schedule", config.schedule), ("final.schedule", None)):
        if schedule is None:
            if not config.final.enabled:
                continue
            schedule = config.final_schedule
        for key, valid, expected in _SCHEDULE_RULES:
            value = getattr(schedule, key)
            if not valid(value):
                raise _refuse(f"{section}.{key}", value, expected)
        if schedule.max_size < schedule.min_size:
            raise _refuse(
                f"{section}.max_size", schedule.max_size, f"≥ min_size {schedule.min_size}"
            )
        if schedule.min_lr > schedule.base_lr:
            raise _refuse(f"{section}.min_lr", schedule.min_lr, f"≤ base_lr {schedule.base_lr}")
    synthetic = config.data.synthetic_settings
    if synthetic is not None:
        for key, valid, expected in _SYNTHETIC_RULES:
            value = getattr(synthetic, key)
            if not valid(value):
                raise _refuse(f"data.synthetic.{key}", value, expected)


def head_cost(config: Any, num_classes: int) -> tuple[int, int]:
    """Parameters and training activations (per image) of the detector's heads: FPN outputs
    and RPN, the box head's two FC layers and the box predictor, whose ``cls_score`` and
    ``bbox_pred`` grow with ``num_classes``. Counted with the engines' default head sizes."""
    fpn, schedule = config.model.fpn_channels, config.schedule
    outputs = 5 * (num_classes + 1)  # cls_score: classes + background; bbox_pred: 4 each
    params = (
        9 * fpn * fpn
        + fpn
        + 5 * _ANCHORS * (fpn + 1)  # RPN conv, objectness, deltas
        + (fpn * _POOLED**2 + 1) * _BOX_HEAD_DIM  # fc1
        + (_BOX_HEAD_DIM + 1) * _BOX_HEAD_DIM  # fc2
        + (_BOX_HEAD_DIM + 1) * outputs  # box predictor
    )
    # FPN levels from stride 4 (a third more for the coarser ones), RPN conv and outputs.
    pixels = schedule.min_size * schedule.max_size / 16 * 4 / 3
    rpn = pixels * (2 * fpn + 5 * _ANCHORS)
    rois = _ROIS_PER_IMAGE * (fpn * _POOLED**2 + 2 * _BOX_HEAD_DIM + outputs)
    return int(params), int(rpn + rois)


def training_bytes(config: Any, num_classes: int = 1, images: int | None = None) -> int:
    """About how many bytes training the seed network takes: parameters with their gradients
    and optimiser state, and the activations of the larger of a detection batch (``images``
    of ``min_size`` × ``max_size``, by default ``ims_per_batch``, through the backbone and the
    heads for ``num_classes`` classes: :func:`head_cost`) and a reignition batch. Counted from
    the code, without building the network."""
    from spnas.arch import code_cost

    m, schedule, reignite = config.model, config.schedule, config.reignite

    def cost(size: tuple[int, int]) -> Any:
        return code_cost(
            config.seed_arch,
            base_width=m.width,
            stem=m.stem,
            input_size=size,
            xb_groups=m.xb_groups,
        )

    detection = cost((schedule.min_size, schedule.max_size))
    pretraining = cost((reignite.image_size, reignite.image_size))
    head_params, head_activations = head_cost(config, num_classes)
    activations = max(
        (detection.activations + head_activations) * (images or schedule.ims_per_batch),
        pretraining.activations * reignite.batch_size,
    )
    params = detection.params + head_params
    return 4 * (params * _PARAMETER_COPIES + activations * _ACTIVATION_COPIES)


def device_bytes(device: str) -> tuple[int, str]:
    """Memory of ``device`` (a schedule's ``device``) in bytes, and how to name it."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            props = torch.cuda.get_device_properties(index)
            return int(props.total_memory), f"GPU {index} ({props.name})"
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 0, "this machine's memory"


def check_cost(config: Any, num_classes: int = 1) -> None:
    """Refuse a seed network that cannot be trained on the configured device: one that needs
    more than twice the device's memory by :func:`training_bytes` (heads for ``num_classes``,
    the data set's categories, included).

    Raises:
        ConfigError: naming ``model.seed_arch`` and ``model.width`` (or, when the heads of
            the data set's classes are what does not fit, ``data.dir`` and its class count),
            the estimate and the memory available, instead of an allocation error in the seed
            trial.
    """
    m, schedule = config.model, config.schedule
    available, where = device_bytes(schedule.device)
    # Data-parallel on GPUs, each holds its share of the batch; CPU processes share one memory.
    images = schedule.ims_per_batch
    if where.startswith("GPU"):
        images //= schedule.gpus_per_trial
    needed = training_bytes(config, num_classes, images)
    if not available or needed <= _MARGIN * available:
        return
    batch = f"{images} images of at most {schedule.max_size} px per batch"
    memory = f"more than {where} has ({available / 2**30:.1f} GiB)"
    if training_bytes(config, 1, images) <= _MARGIN * available:
        raise ConfigError(
            f"'data.dir' {config.data.dir!r} has {num_classes} categories: the detector's heads "
            f"for them (box predictor: {5 * (num_classes + 1)} outputs of {_BOX_HEAD_DIM} "
            f"inputs, for {_ROIS_PER_IMAGE} RoIs an image) need about {needed / 2**30:.1f} GiB "
            f"to train ({batch}), {memory}: expected fewer categories or a smaller batch"
        )
    raise ConfigError(
        f"'model.seed_arch' {m.seed_arch} at 'model.width' {m.width} needs about "
        f"{needed / 2**30:.1f} GiB to train ({batch}), {memory}: choose a smaller width, "
        "network or batch"
    )


def _schedules(config: Any) -> list[tuple[str, Any]]:
    """The schedules trials of ``config`` train with, by the key that sets them."""
    schedules = [("schedule", config.schedule)]
    if config.verify.enabled:
        schedules.append(("verify.schedule", config.verify_schedule))
    if config.final.enabled:
        schedules.append(("final.schedule", config.final_schedule))
    return schedules


def check_devices(config: Any) -> None:
    """Refuse a ``device`` this machine does not have (a CUDA device without CUDA, an index
    past the GPUs visible here, MPS without MPS), and more ``gpus_per_trial`` than the GPUs
    visible, for every schedule trials train with.

    Raises:
        ConfigError: naming the key (``schedule.device``, ``verify.schedule.device``, …), the
            value and the devices there are.
    """
    import torch

    from spnas.device import resolve_device

    for section, schedule in _schedules(config):
        key, device = f"{section}.device", schedule.device
        try:
            resolved = resolve_device(device)
        except ConfigError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise ConfigError(
                f"'{key}' is {device!r}: {reason}; expected 'auto', 'cpu' or a device this "
                "machine has"
            ) from None
        if resolved.type == "cuda":
            count = torch.cuda.device_count()
            if (resolved.index or 0) >= count:
                raise ConfigError(
                    f"'{key}' is {device!r}, but {count} GPU(s) are visible here "
                    f"(cuda:0 to cuda:{count - 1}): expected one of them, 'cuda' or 'auto'"
                )
            if schedule.gpus_per_trial > count:
                raise _refuse(
                    f"{section}.gpus_per_trial",
                    schedule.gpus_per_trial,
                    f"at most the {count} GPU(s) visible here",
                )
        elif resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"'{key}' is {device!r}: MPS is not available on this machine")


def check_storage(url: str) -> None:
    """Refuse a storage URL that no storage opens, before any file or directory is made.

    Raises:
        StorageError: naming ``study.storage`` and the URL (without its password).
    """
    from spnas.storage import StorageError, check_storage_url

    try:
        check_storage_url(url)
    except StorageError as exc:
        raise StorageError(f"'study.storage' (or --storage): {exc}") from None


def check_settings(config: Any, storage_url: str | None = None) -> None:
    """The checks of a search that need neither the data set nor any file to be written:
    the storage URL's form, the devices, and the engine's own section (its config file, and
    ``engine.opts`` applied to it). ``spnas search`` runs them before it generates a
    synthetic data set, and :func:`~spnas.search.check_inputs` first of all.

    Raises:
        StorageError, ConfigError: naming the key.
    """
    from spnas.search._objective import build_search_engine

    check_storage(storage_url or config.study.storage)
    check_devices(config)
    try:
        engine = build_search_engine(config)
    except ConfigError as exc:
        raise ConfigError(f"'engine': {exc}") from exc
    try:  # the engine checks its own section (its config file exists and is safe YAML)
        engine.check()
    except ConfigError as exc:
        text = str(exc)
        field, sep, rest = text.partition(":")
        if sep and field in ("config", "opts"):  # the engine named its option
            raise ConfigError(f"'engine.{field}':{rest}") from exc
        raise ConfigError(f"'engine.config': {text}") from exc


def check_lamr_category(config: Any, category_ids: Sequence[int]) -> None:
    """``data.lamr_category`` is null or a category id of the data set.

    Raises:
        ConfigError: naming the key, the value and the data set's ids.
    """
    category = config.data.lamr_category
    if category is None or category in category_ids:
        return
    ids = sorted(category_ids)
    shown = ", ".join(map(str, ids[:10])) + (", …" if len(ids) > 10 else "")
    raise _refuse(
        "data.lamr_category",
        category,
        f"null (every category) or a category id of {config.data.dir!r} ({shown})",
    )
