"""detectron2 checkpoints written whole or not at all (spnas.engines.detectron2.checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")

from spnas.engines.detectron2.checkpoint import AtomicCheckpointer


def test_checkpoints_load_back_and_are_tagged(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    other = nn.Linear(3, 2)
    loaded = AtomicCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 9
    assert torch.equal(other.weight, model.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]


def test_a_save_killed_midway_leaves_the_last_complete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)

    def dies_midway(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # type: ignore[arg-type]
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000019", iteration=19)
    # Nothing of the failed save is visible: no partial file, the tag names the good one.
    assert not (tmp_path / "model_0000019.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
