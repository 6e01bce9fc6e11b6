"""One training run of a torchvision detector: data loading, SGD steps, periodic evaluation.

Laid out as torchvision's detection reference scripts (``train_one_epoch``), but counted in
iterations, as the search's schedules are. In a process group (a data-parallel trial) the
model trains as a ``DistributedDataParallel`` on a ``DistributedSampler``'s shard, each
process taking ``ims_per_batch / world size`` images per step, as those scripts do; with
``schedule.amp`` on CUDA, under ``torch.autocast`` with a grad scaler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from spnas.data.coco import CocoDataset
from spnas.data.torch_dataset import DetectionDataset, collate
from spnas.device import resolve_amp
from spnas.engines._types import Reporter, Schedule, TrialDiverged
from spnas.engines.distributed import get_rank, get_world_size, is_main_process

__all__ = ["TrainingTimes", "seeded", "train"]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs inside the block and restore their states after it.

    A trial must be reproducible from its schedule's seed, yet must not change the random
    state of the caller (the search process runs many trials, and reports its own sampling).
    """
    devices = [_cuda_index(device)] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclasses.dataclass
class TrainingTimes:
    """Seconds :func:`train` spent in SGD steps and in periodic evaluations."""

    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def train(
    model: nn.Module,
    train_set: CocoDataset,
    schedule: Schedule,
    device: torch.device,
    *,
    reporter: Reporter,
    evaluate: Callable[[nn.Module], dict[str, float]],
    name: str,
    show_progress: bool = True,
) -> TrainingTimes:
    """Train ``model`` (on ``device``) on ``train_set`` by ``schedule`` with SGD.

    Every ``schedule.eval_period`` iterations before the last (when positive), the main
    process passes ``evaluate(model)`` to ``reporter.evaluation``, which may raise
    :class:`optuna.TrialPruned`; it propagates. The final evaluation is the caller's.

    Args:
        name: what is trained, for the progress bar and error messages (the architecture).

    Raises:
        TrialDiverged: when the loss becomes non-finite; the message names the iteration and
            every loss component, and its attributes hold the iteration, loss and seed.
    """
    total = schedule.total_iters(len(train_set))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=schedule.lr_at(0, total),
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
    )
    loader = _train_loader(train_set, schedule)
    main = is_main_process()
    trained: nn.Module = model
    if get_world_size() > 1:
        ids = [_cuda_index(device)] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    amp = resolve_amp(schedule.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    times = TrainingTimes()
    batches = _infinite(loader)
    progress = tqdm(
        total=total,
        desc=f"train {name}",
        unit="it",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not (show_progress and main),
    )
    try:
        model.train()
        for it in range(total):
            started = time.perf_counter()
            lr = schedule.lr_at(it, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            where = f"training {name} diverged at iteration {it} of {total} (lr {lr:.4g})"
            loss = _step(
                trained, optimizer, scaler, next(batches), device, where, it, schedule.seed
            )
            times.train_seconds += time.perf_counter() - started
            progress.update()
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", refresh=False)
            reporter.progress(it + 1, total, loss)

            done = it + 1
            periodic = schedule.eval_period > 0 and done % schedule.eval_period == 0
            if main and periodic and done < total:
                started = time.perf_counter()
                metrics = evaluate(model)
                times.eval_seconds += time.perf_counter() - started
                model.train()
                reporter.evaluation(done, metrics)
    finally:
        progress.close()
        # Dropping the loader here (not when an exception's traceback is freed) shuts its
        # workers down at once, so a diverged or pruned trial leaves no processes.
        del batches, loader
    return times


def _train_loader(train_set: CocoDataset, schedule: Schedule) -> DataLoader:
    dataset = DetectionDataset(train_set, train=True)
    world = get_world_size()
    batch = schedule.ims_per_batch // world
    sampler = None
    if world > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=get_rank(), shuffle=True, seed=schedule.seed
        )
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) >= schedule.ims_per_batch,
        num_workers=schedule.num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(schedule.seed),
        # Workers live through all epochs instead of being re-spawned per epoch.
        persistent_workers=schedule.num_workers > 0,
    )


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: tuple[list[torch.Tensor], list[dict[str, Any]]],
    device: torch.device,
    where: str,
    iteration: int | None = None,
    seed: int | None = None,
) -> float:
    """One SGD step on ``batch``; returns its loss.

    Raises:
        TrialDiverged: ``where``, the loss and its components, when the loss is not finite
            (with ``iteration``, the loss and ``seed`` as attributes).
    """
    images, targets = batch
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
    ]
    with torch.autocast(images[0].device.type, enabled=scaler.is_enabled()):
        losses = model(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        value = loss.detach().item()
        raise TrialDiverged(
            f"{where}: loss {value} ({_loss_text(losses)}); lower base_lr or raise warmup_iters",
            iteration=iteration,
            loss=value,
            seed=seed,
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach().item()


def _cuda_index(device: torch.device) -> int:
    """The GPU ``device`` names; ``cuda`` alone is the current one (a data-parallel process's
    own, not GPU 0)."""
    return torch.cuda.current_device() if device.index is None else device.index


def _infinite(loader: DataLoader) -> Iterator[Any]:
    """Batches of ``loader``, epoch after epoch (reshuffled each epoch)."""
    epoch = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _loss_text(losses: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{name}={value.detach().item():.4g}" for name, value in losses.items())
