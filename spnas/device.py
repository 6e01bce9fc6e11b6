"""Device selection: CUDA when present, else the CPU."""

from __future__ import annotations

import logging

import torch

from spnas.exceptions import ConfigError

_logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` → ``cuda`` when available, else ``cpu``; otherwise as given.

    Raises:
        ConfigError: for a CUDA device on a machine without one, or an unknown name.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r}: expected 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    return resolved


def check_one_gpu_each(device: str | torch.device | None, processes: int, where: str) -> None:
    """Refuse a device with an index (``cuda:1``) for more than one process: each process of a
    data-parallel run takes its own GPU (its local rank), and one named GPU would either be
    ignored or hold every process. ``where`` names the settings in the message (e.g.
    ``"--device 'cuda:1' with --num-gpus 8"``). Unknown names are left to
    :func:`resolve_device`.

    Raises:
        ConfigError: naming ``where`` and what is expected instead.
    """
    if processes <= 1 or device is None or device == "auto":
        return
    try:
        index = torch.device(device).index
    except (RuntimeError, TypeError):
        return
    if index is not None:
        raise ConfigError(
            f"{where}: expected 'cuda', 'auto' or 'cpu' (each of the {processes} processes "
            "takes its own GPU; choose the GPUs with CUDA_VISIBLE_DEVICES)"
        )


def resolve_amp(amp: bool, device: str | torch.device) -> bool:
    """Whether to train in mixed precision: ``amp`` on CUDA; on another device a one-line
    warning and ``False`` (a study written for GPUs still runs, in float32, on a CPU)."""
    device = torch.device(device)
    if amp and device.type != "cuda":
        _logger.warning("amp: mixed precision needs CUDA; training on %s in float32", device)
        return False
    return amp
