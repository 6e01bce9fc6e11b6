"""Checkpoints that are never half written: detectron2's checkpointer, atomically.

detectron2 (fvcore) writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place; a
process killed in between (preemption, a full disk) leaves a truncated checkpoint that
``--resume`` would load. :class:`AtomicCheckpointer` writes both through
:func:`spnas._io.atomic_write`, in the same format, so ``last_checkpoint`` only ever names a
complete file.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from spnas._io import atomic_write

__all__ = ["AtomicCheckpointer"]


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`~detectron2.checkpoint.DetectionCheckpointer` whose files appear whole or not
    at all (local save directories; other ``PathManager`` backends keep detectron2's way)."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk or "://" in str(self.save_dir):
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, functools.partial(torch.save, data))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in str(self.save_dir):
            super().tag_last_checkpoint(last_filename_basename)
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda tmp: tmp.write_text(last_filename_basename))
