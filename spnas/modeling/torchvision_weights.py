"""Load torchvision ResNet / ResNeXt weights into a SerialNet.

torchvision's ``resnet18/34/50/101`` and ``resnext50_32x4d`` map one to one onto the codes
``RESNET18 … RESNEXT50`` of :mod:`spnas.arch` with a ``resnet`` stem::

    conv1, bn1                      → stem.conv1, stem.norm1
    layer{i}.{j}.conv{m}, .bn{m}    → res{i+1}.{j}.conv{m}, .norm{m}
    layer{i}.{j}.downsample.{0,1}   → res{i+1}.{j}.shortcut.{conv,norm}
    fc.*                            → dropped (classification head)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from spnas._io import load_tensor_file
from spnas.exceptions import WeightsError
from spnas.modeling.serialnet import SerialNet

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^conv1\."), "stem.conv1."),
    (re.compile(r"^bn1\."), "stem.norm1."),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.0\."), "res{s}.{j}.shortcut.conv."),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\.1\."), "res{s}.{j}.shortcut.norm."),
    (re.compile(r"^layer(\d+)\.(\d+)\.conv(\d)\."), "res{s}.{j}.conv{m}."),
    (re.compile(r"^layer(\d+)\.(\d+)\.bn(\d)\."), "res{s}.{j}.norm{m}."),
)


def torchvision_key(key: str) -> str | None:
    """The SerialNet name of a torchvision ResNet state-dict key; ``None`` for the fc head."""
    if key.startswith("fc."):
        return None
    for pattern, template in _RULES:
        match = pattern.match(key)
        if match:
            groups = match.groups()
            values = {"s": int(groups[0]) + 1, "j": groups[1]} if groups else {}
            if len(groups) == 3:
                values["m"] = groups[2]
            return template.format(**values) + key[match.end() :]
    raise WeightsError(f"unexpected key {key!r} in a torchvision ResNet state dict")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` with :func:`spnas._io.load_tensor_file` (no code runs).

    Accepts a bare state dict or a checkpoint with a ``state_dict`` / ``model`` entry.

    Raises:
        WeightsError: naming the file when it is missing, truncated or not a state dict.
    """
    path = Path(path)
    obj = load_tensor_file(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"weights file {str(path)!r} holds {type(obj).__name__}, expected a state dict "
            "of tensors (or a checkpoint with a 'state_dict' or 'model' entry)"
        )
    return obj


def load_torchvision_resnet(
    net: SerialNet, state_dict: Mapping[str, torch.Tensor] | str | Path
) -> SerialNet:
    """Copy torchvision ResNet/ResNeXt weights into ``net`` (in place; returns ``net``).

    Args:
        net: a SerialNet with a ``resnet`` stem whose code matches the torchvision model.
        state_dict: the torchvision model's state dict, or the path of a file holding it.

    Raises:
        WeightsError: when a tensor is missing, left over or of another shape; the message
            names the key.
    """
    if isinstance(state_dict, (str, Path)):
        path = state_dict
        try:
            return load_torchvision_resnet(net, read_weights(path))
        except WeightsError as exc:
            if str(path) in str(exc):
                raise
            raise WeightsError(f"weights file {str(path)!r}: {exc}") from None
    target = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = torchvision_key(key)
        if name is None:
            continue
        if name.endswith("num_batches_tracked") and name not in target:
            continue  # FrozenBN and GN keep no batch counter
        if name not in target:
            raise WeightsError(
                f"torchvision key {key!r} (→ {name!r}) has no place in {net.code}: "
                "the code does not match the torchvision architecture"
            )
        if target[name].shape != value.shape:
            raise WeightsError(
                f"torchvision key {key!r} has shape {tuple(value.shape)}, {net.code} expects "
                f"{tuple(target[name].shape)} at {name!r}"
            )
        converted[name] = value
    missing = [k for k in target if k not in converted and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"torchvision state dict has no tensor for {missing[0]!r} of {net.code} "
            f"({len(missing)} missing): the code does not match the torchvision architecture"
        )
    net.load_state_dict(converted, strict=False)
    return net
