"""Reignition: classification pretraining of a serial network (paper §3.1, docs/design.md §2).

When the serial search gets stuck, the best network so far is pretrained on classification
("reignited") so the next round starts from weights with the effect of ImageNet pretraining.
The same routine produces the seed network's initial weights when no torchvision checkpoint
file is given.

Data: an ImageFolder (ImageNet in real use: ``DIR/train/<class>/…`` and optionally
``DIR/val/<class>/…``, or ``DIR/<class>/…``), or — the default — square crops of the objects of
a COCO-format detection training set (:class:`~spnas.data.crops.ObjectCrops`), validated on
the crops of its validation split.

The result is a state dict with :class:`~spnas.modeling.SerialNet` keys (no classifier head),
written with ``torch.save`` and readable with ``torch.load(weights_only=True)``; a sidecar
``<out>.json`` records the code and the accuracy. Training resumes from ``<out>.ckpt`` (written
at every epoch end) when interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from spnas._io import atomic_write, load_tensor_file
from spnas.arch import SerialCode
from spnas.data.coco import DatasetSplits, load_coco
from spnas.data.crops import ObjectCrops
from spnas.data.normalization import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from spnas.device import resolve_device
from spnas.exceptions import ConfigError, DataError, WeightsError
from spnas.lr_schedule import cosine_lr
from spnas.modeling import SerialNet, rescale_normalized_convs
from spnas.modeling.torchvision_weights import read_weights

_logger = logging.getLogger(__name__)


#: The linear scaling rule's reference: lr 0.1 at batch 256, ResNet's ImageNet recipe.
REFERENCE_LR, REFERENCE_BATCH = 0.1, 256


def linear_scaled_lr(batch_size: int) -> float:
    """The learning rate of ``batch_size`` by the linear scaling rule (Goyal et al., 2017):
    0.1 × batch_size / 256."""
    return REFERENCE_LR * batch_size / REFERENCE_BATCH


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of classification pretraining.

    The defaults suit the crops of a small detection set on a CPU; ImageNet-scale runs want
    ``image_size=224``, ``epochs≈90``, ``batch_size=256``.

    ``lr``: ``None`` follows the batch size, :func:`linear_scaled_lr` (0.1 at 256; crops at
    batch 32 get 0.0125: at 0.1 they trained to a lower crop accuracy and, with the weights'
    growth, left detectors retrained from them 18–19 AP below randomly initialised ones,
    ``docs/benchmarks.md``).
    ``min_lr``: the cosine schedule's end, ``None``: 1e-4, or ``lr`` when that is lower.

    ``rescale_weights``: once trained, every convolution that a norm layer follows is scaled
    back to the RMS of a fresh initialisation, its norm's statistics alike
    (:func:`~spnas.modeling.rescale_normalized_convs`): the network computes the same, and the
    detection training that starts from it learns at its full rate instead of one slowed by
    the weights' growth.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    min_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    image_size: int = 64
    base_width: int = 64
    stem: str = "resnet"
    xb_groups: int = 32
    seed: int = 0
    num_workers: int = 0
    rescale_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size", "base_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"pretrain {name}={value!r}: expected a positive integer")
        if self.lr is None:
            object.__setattr__(self, "lr", linear_scaled_lr(self.batch_size))
        if self.min_lr is None:
            object.__setattr__(self, "min_lr", min(1e-4, self.lr))
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"pretrain lr={self.lr!r}, min_lr={self.min_lr!r}: expected 0 ≤ min_lr ≤ lr, lr > 0"
            )


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` produced."""

    weights: Path
    code: SerialCode
    accuracy: float
    train_accuracy: float
    train_loss: float
    num_classes: int
    num_train: int
    num_val: int
    epochs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["weights"] = str(self.weights)
        values["code"] = str(self.code)
        return values


class Classifier(nn.Module):
    """A SerialNet with global average pooling and a linear head on its last stage."""

    def __init__(self, backbone: SerialNet, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        last = backbone.output_shape()[backbone.out_features[-1]]
        self.head = nn.Linear(last.channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[self.backbone.out_features[-1]]
        return self.head(features.mean(dim=(2, 3)))


def _imagefolder_splits(root: Path, image_size: int) -> tuple[Dataset, Dataset | None, int]:
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(
        [m / 255 for m in PIXEL_MEAN_RGB], [s / 255 for s in PIXEL_STD_RGB]
    )
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(int(image_size * 1.14)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    if not root.is_dir():
        raise DataError(f"ImageFolder {str(root)!r} does not exist")
    train_dir = root / "train" if (root / "train").is_dir() else root
    try:
        train = datasets.ImageFolder(str(train_dir), transform=train_tf)
        val = (
            datasets.ImageFolder(str(root / "val"), transform=val_tf)
            if (root / "val").is_dir()
            else None
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(
            f"ImageFolder {str(train_dir)!r}: {exc}; expected <class>/<image> folders"
        ) from exc
    if val is not None and val.classes != train.classes:
        raise DataError(
            f"ImageFolder {str(root)!r}: val classes {val.classes} differ from train "
            f"classes {train.classes}"
        )
    return train, val, len(train.classes)


def _crop_splits(data: Path, image_size: int) -> tuple[Dataset, Dataset | None, int]:
    if data.is_dir():
        splits = DatasetSplits.from_dir(data)
        train_set, val_set = splits.load("train"), splits.load("val")
    else:
        train_set, val_set = load_coco(data), None
    train = ObjectCrops(train_set, size=image_size, flip=True)
    val = None
    if val_set is not None:
        if val_set.category_ids != train_set.category_ids:
            raise DataError(
                f"{str(val_set.json_path)!r} has categories {list(val_set.category_ids)}, "
                f"expected those of {str(train_set.json_path)!r}: {list(train_set.category_ids)}"
            )
        val = ObjectCrops(val_set, size=image_size)
    return train, val, train.num_classes


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct / max(total, 1)


def pretrain(
    code: SerialCode | str,
    out: str | Path,
    *,
    data: str | Path | None = None,
    imagefolder: str | Path | None = None,
    config: PretrainConfig | None = None,
    init_weights: str | Path | None = None,
    norm: str = "BN",
    device: str | torch.device | None = None,
    resume: bool = True,
    show_progress: bool = True,
) -> PretrainResult:
    """Pretrain ``code`` on classification and save its backbone weights to ``out``.

    Args:
        code: the serial architecture.
        out: where to write the backbone state dict.
        data: a COCO data set directory (``train.json``/``val.json``) or json file whose object
            crops are the classes; used when ``imagefolder`` is not given.
        imagefolder: an ImageFolder directory (takes precedence over ``data``).
        config: hyper-parameters; :class:`PretrainConfig` defaults when ``None``.
        init_weights: a backbone state dict to start from (e.g. the current best network's
            detection-trained backbone); keys that do not fit are reported and skipped.
        norm: the backbone's norm during pretraining. ``FrozenBN`` cannot learn, so it trains
            as ``BN``; the saved statistics load into a FrozenBN network.
        device: ``"auto"`` (default), ``"cpu"`` or ``"cuda[:N]"``.
        resume: continue from ``<out>.ckpt`` when it exists and matches.
        show_progress: show a tqdm progress bar.

    Returns:
        The weights path, validation accuracy (train accuracy when there is no validation
        split) and training statistics.

    Raises:
        DataError: when neither data source is given or a data set is malformed.
    """
    code = SerialCode.parse(code)
    config = config or PretrainConfig()
    out = Path(out)
    device = resolve_device(device)
    train_set, val_set, num_classes = _load_data(data, imagefolder, config.image_size)

    torch.manual_seed(config.seed)
    backbone = _build_backbone(code, config, norm, init_weights)
    model = Classifier(backbone, num_classes).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed)
    train_loader, val_loader = _loaders(train_set, val_set, config, generator)

    checkpoint = _Checkpoint(
        out.with_name(out.name + ".ckpt"),
        {"code": str(code), "config": dataclasses.asdict(config), "norm": norm},
    )
    start_epoch, stats = 0, _EpochStats()
    if resume:
        start_epoch, stats = checkpoint.restore(model, optimizer, generator, code)

    started = time.perf_counter()
    progress = tqdm(
        total=len(train_loader) * config.epochs,
        initial=start_epoch * len(train_loader),
        desc=f"pretrain {code}",
        disable=not show_progress,
        unit="it",
        dynamic_ncols=True,
    )
    model.train()
    for epoch in range(start_epoch, config.epochs):
        stats = train_one_epoch(
            model, optimizer, train_loader, device, epoch, config, progress, name=str(code)
        )
        checkpoint.save(model, optimizer, generator, epoch + 1, stats)
    progress.close()
    if config.rescale_weights:
        rescale_normalized_convs(backbone)

    accuracy = (
        evaluate_accuracy(model, val_loader, device) if val_loader is not None else stats.accuracy
    )
    result = PretrainResult(
        weights=out,
        code=code,
        accuracy=accuracy,
        train_accuracy=stats.accuracy,
        train_loss=stats.loss,
        num_classes=num_classes,
        num_train=len(train_set),
        num_val=len(val_set) if val_set is not None else 0,
        epochs=config.epochs,
        seconds=time.perf_counter() - started,
    )
    _write_result(result, backbone)
    checkpoint.path.unlink(missing_ok=True)
    return result


def _loaders(
    train_set: Dataset, val_set: Dataset | None, config: PretrainConfig, generator: torch.Generator
) -> tuple[DataLoader, DataLoader | None]:
    """The shuffled training loader (drawing from ``generator``) and the validation one."""
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,
        num_workers=config.num_workers,
        generator=generator,
    )
    val_loader = (
        DataLoader(val_set, batch_size=config.batch_size * 2, num_workers=config.num_workers)
        if val_set is not None
        else None
    )
    return train_loader, val_loader


def _write_result(result: PretrainResult, backbone: SerialNet) -> None:
    """Write the backbone's weights and the ``<out>.json`` sidecar; log the accuracy."""
    out = result.weights
    atomic_write(out, functools.partial(torch.save, _cpu_state(backbone)))
    sidecar = json.dumps(result.to_dict(), indent=2)
    atomic_write(out.with_name(out.name + ".json"), lambda tmp: tmp.write_text(sidecar))
    _logger.info(
        "pretrained %s: accuracy %.3f on %d %s examples (%d classes) in %.1f s → %s",
        result.code,
        result.accuracy,
        result.num_val or result.num_train,
        "validation" if result.num_val else "training",
        result.num_classes,
        result.seconds,
        out,
    )


def _load_data(
    data: str | Path | None, imagefolder: str | Path | None, image_size: int
) -> tuple[Dataset, Dataset | None, int]:
    """Train and validation sets and the class count, from whichever source is given."""
    if imagefolder is not None:
        return _imagefolder_splits(Path(imagefolder), image_size)
    if data is not None:
        return _crop_splits(Path(data), image_size)
    raise DataError("pretraining needs data: an ImageFolder directory or a COCO data set")


def _build_backbone(
    code: SerialCode, config: PretrainConfig, norm: str, init_weights: str | Path | None
) -> SerialNet:
    """The SerialNet to pretrain, starting from the tensors of ``init_weights`` that fit."""
    backbone = SerialNet(
        code,
        base_width=config.base_width,
        stem=config.stem,
        norm="BN" if norm == "FrozenBN" else norm,
        xb_groups=config.xb_groups,
    )
    if init_weights is not None:
        state = read_weights(init_weights)
        target = backbone.state_dict()
        fitting = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
        backbone.load_state_dict(fitting, strict=False)
        _logger.info(
            "pretrain: %d/%d backbone tensors from %s", len(fitting), len(target), init_weights
        )
    return backbone


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


@dataclasses.dataclass
class _EpochStats:
    """Loss and accuracy sums over the examples of one training epoch."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    config: PretrainConfig,
    progress: tqdm,
    name: str = "the network",
) -> _EpochStats:
    """One epoch of SGD with the cosine schedule over all ``config.epochs``; its statistics.

    ``name`` (the architecture) names what diverged in the error message.

    Raises:
        FloatingPointError: when the loss becomes non-finite.
    """
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    criterion = nn.CrossEntropyLoss()
    stats = _EpochStats()
    for step, (images, labels) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(
                epoch * steps_per_epoch + step, total_steps, config.lr, config.min_lr
            )
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = criterion(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"pretraining {name} diverged at epoch {epoch}, step {step} (loss {loss}); "
                "lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats.loss_sum += loss.item() * len(labels)
        stats.correct += float((logits.argmax(1) == labels).sum())
        stats.seen += len(labels)
        progress.update()
        progress.set_postfix(epoch=epoch + 1, loss=f"{stats.loss:.3f}")
    return stats


class _Checkpoint:
    """``<out>.ckpt``: the state of a run at an epoch end, for resuming it when interrupted.

    ``fingerprint`` (code, config, norm) tells a checkpoint of this run from another's.
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        epochs_done: int,
        stats: _EpochStats,
    ) -> None:
        # Written aside and renamed into place: a run killed while saving leaves the previous
        # checkpoint intact rather than a truncated one.
        saved = {
            "fingerprint": self.fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "generator": generator.get_state(),
            "epoch": epochs_done,
            "stats": [stats.loss_sum, stats.correct, stats.seen],
        }
        atomic_write(self.path, functools.partial(torch.save, saved))

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        code: SerialCode,
    ) -> tuple[int, _EpochStats]:
        """Load this run's checkpoint into the arguments; the epochs it finished and the last
        one's statistics (in case no epoch is left to run). ``(0, empty)`` when there is no
        checkpoint of this run."""
        if not self.path.is_file():
            return 0, _EpochStats()
        try:
            saved = load_tensor_file(self.path, "pretraining checkpoint")
        except WeightsError as exc:  # truncated (an older version killed mid-save), or foreign
            _logger.warning("pretrain: ignoring an unreadable checkpoint, starting over: %s", exc)
            return 0, _EpochStats()
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            _logger.warning("pretrain: ignoring %s, written for another run", self.path)
            return 0, _EpochStats()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        generator.set_state(saved["generator"])
        _logger.info("pretrain: resuming %s from epoch %d", code, int(saved["epoch"]))
        stats = (float(v) for v in saved.get("stats", (0.0, 0.0, 0.0)))
        return int(saved["epoch"]), _EpochStats(*stats)
