"""atomic_write: readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from spnas._io import atomic_write


def test_writes_through_a_temporary_file_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.json"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert not path.exists()  # nothing at the destination while writing
        tmp.write_text("new")

    assert atomic_write(path, write) == path
    assert path.read_text() == "new"
    assert seen == [path.with_name(f"file.json.{os.getpid()}.tmp")]
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    atomic_write(path, functools.partial(torch.save, {"w": torch.ones(2)}))

    def killed(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, killed)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pth"]
