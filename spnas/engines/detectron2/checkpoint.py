"""detectron2's checkpointer, writing files whole and reading them without running code.

detectron2 (fvcore) writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place; a
process killed in between (preemption, a full disk) leaves a truncated checkpoint that
``--resume`` would load. :class:`AtomicCheckpointer` writes both through
:func:`spnas._io.atomic_write`, in the same format, so ``last_checkpoint`` only ever names a
complete file.

detectron2 reads ``.pkl`` files with :mod:`pickle` and fvcore others with ``torch.load``,
both of which can run code the file names; and ``--resume`` loads whatever file
``OUTPUT_DIR/last_checkpoint`` names. :class:`AtomicCheckpointer` reads every file (resume
checkpoints and ``MODEL.WEIGHTS``) through :func:`spnas._io.load_tensor_file` instead; only a
``MODEL.WEIGHTS`` the user vouched for (``--allow-pickle``) is read detectron2's way.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from spnas._io import PICKLE_SUFFIXES, atomic_write, load_tensor_file
from spnas.exceptions import WeightsError

__all__ = ["AtomicCheckpointer"]


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`~detectron2.checkpoint.DetectionCheckpointer` whose files appear whole or not
    at all (local save directories; other ``PathManager`` backends keep detectron2's way), and
    are read without running code.

    Attributes:
        trusted_pickle: the path (as given to :meth:`load`, e.g. ``MODEL.WEIGHTS``) of the one
            ``.pkl`` file the user opted in to reading with :mod:`pickle`; ``""``: none. A
            checkpoint ``last_checkpoint`` names is never trusted.
    """

    trusted_pickle: str = ""
    _loading: str = ""

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

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # fvcore hands _load_file a local copy of a URL: remember what the caller asked for.
        previous, self._loading = self._loading, str(path or "")
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = previous

    def _load_file(self, filename: str) -> dict[str, Any]:
        """``filename`` as detectron2's checkpointer returns it (``{"model": state dict, …}``),
        read by :func:`~spnas._io.load_tensor_file`.

        Raises:
            WeightsError: naming the file when it is a ``.pkl`` (unless it is
                :attr:`trusted_pickle`), pickles anything but tensors and containers, or is
                no checkpoint.
        """
        trusted = bool(self.trusted_pickle) and self._loading == self.trusted_pickle
        if trusted and filename.lower().endswith(PICKLE_SUFFIXES):
            return super()._load_file(filename)
        loaded = load_tensor_file(filename, "detectron2 checkpoint")
        if not isinstance(loaded, dict):
            raise WeightsError(
                f"detectron2 checkpoint {filename!r} holds {type(loaded).__name__}, expected a "
                "state dict or a checkpoint with a 'model' entry"
            )
        if filename.endswith(".pyth"):  # pycls, converted as detectron2 does
            state = loaded.get("model_state")
            if not isinstance(state, dict):
                raise WeightsError(f"pycls checkpoint {filename!r} has no 'model_state' entry")
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return loaded if "model" in loaded else {"model": loaded}
