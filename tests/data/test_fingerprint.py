"""A data set's fingerprint: unchanged annotation files pass without being read, changed ones
are refused naming the file and what was expected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from spnas.data import _fingerprint as fingerprint_module
from spnas.data import check_fingerprint, dataset_fingerprint, make_synthetic_dataset
from spnas.data.coco import DatasetSplits
from spnas.exceptions import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fingerprint") / "data"
    make_synthetic_dataset(root, train=4, val=2, size=32, classes=2, seed=0, show_progress=False)
    return root


@pytest.fixture()
def copy(dataset: Path, tmp_path: Path) -> DatasetSplits:
    shutil.copytree(dataset, tmp_path / "data")  # copytree keeps modification times
    return DatasetSplits.from_dir(tmp_path / "data")


def test_unchanged_files_are_not_read(copy: DatasetSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = dataset_fingerprint(copy)
    assert sorted(expected) == ["train.json", "val.json"]
    assert expected["train.json"]["size"] == copy.train_json.stat().st_size

    def no_hashing(path: object) -> str:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(fingerprint_module, "sha256_file", no_hashing)
    check_fingerprint(copy, expected)


def test_a_touched_file_with_the_same_content_passes(copy: DatasetSplits) -> None:
    expected = dataset_fingerprint(copy)
    stat = copy.val_json.stat()
    os.utime(copy.val_json, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    check_fingerprint(copy, expected)


def test_a_file_of_another_size_is_refused(copy: DatasetSplits) -> None:
    expected = dataset_fingerprint(copy)
    copy.train_json.write_text(copy.train_json.read_text() + "\n")
    size = expected["train.json"]["size"]
    with pytest.raises(DataError) as error:
        check_fingerprint(copy, expected)
    message = str(error.value)
    assert str(copy.train_json) in message
    assert f"{size + 1} bytes" in message and f"expected {size} bytes" in message


def test_same_size_other_content_is_refused_by_its_hash(copy: DatasetSplits) -> None:
    expected = dataset_fingerprint(copy)
    text = copy.val_json.read_text()
    changed = text.replace('"description":"spnas', '"description":"SPNAS', 1)
    assert changed != text and len(changed) == len(text)
    copy.val_json.write_text(changed)
    stat = copy.val_json.stat()
    # A coarse-clock file system may keep the old time: move it, as any real edit does.
    os.utime(copy.val_json, ns=(stat.st_atime_ns, expected["val.json"]["mtime_ns"] + 10**9))
    with pytest.raises(DataError) as error:
        check_fingerprint(copy, expected)
    message = str(error.value)
    assert str(copy.val_json) in message and "SHA-256" in message
    assert expected["val.json"]["sha256"][:12] in message
