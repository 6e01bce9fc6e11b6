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


def resolve_amp(amp: bool, device: str | torch.device) -> bool:
    """Whether to train in mixed precision: ``amp`` on CUDA; on another device a one-line
    warning and ``False`` (a study written for GPUs still runs, in float32, on a CPU)."""
    device = torch.device(device)
    if amp and device.type != "cuda":
        _logger.warning("amp: mixed precision needs CUDA; training on %s in float32", device)
        return False
    return amp
