from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import spnas.cli
from spnas.data import SHAPES, SyntheticDataset, make_synthetic_dataset
from spnas.exceptions import DataError

SIZE = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synth"),
        train=40,
        val=10,
        size=SIZE,
        classes=len(SHAPES),
        seed=0,
        show_progress=False,
    )


def _image_bytes(dataset: SyntheticDataset, split: str) -> dict[str, bytes]:
    images = json.loads(Path(dataset.root, f"{split}.json").read_text())["images"]
    return {im["file_name"]: (dataset.image_root / im["file_name"]).read_bytes() for im in images}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", train=4, val=2, seed=3, show_progress=False)
    second = make_synthetic_dataset(tmp_path / "b", train=4, val=2, seed=3, show_progress=False)
    for split in ("train", "val"):
        assert (
            Path(first.root, f"{split}.json").read_bytes()
            == Path(second.root, f"{split}.json").read_bytes()
        )
        assert _image_bytes(first, split) == _image_bytes(second, split)

    other = make_synthetic_dataset(tmp_path / "c", train=4, val=2, seed=4, show_progress=False)
    assert other.train_json.read_bytes() != first.train_json.read_bytes()
    assert set(_image_bytes(other, "train").values()).isdisjoint(
        _image_bytes(first, "train").values()
    )


def test_train_and_val_images_differ(dataset: SyntheticDataset) -> None:
    train = set(_image_bytes(dataset, "train").values())
    val = set(_image_bytes(dataset, "val").values())
    assert len(train) == dataset.num_train_images
    assert train.isdisjoint(val)


def test_more_images_keep_the_first_ones(dataset: SyntheticDataset, tmp_path: Path) -> None:
    small = make_synthetic_dataset(
        tmp_path, train=3, val=1, size=SIZE, classes=len(SHAPES), seed=0, show_progress=False
    )
    full = _image_bytes(dataset, "train")
    assert all(full[name] == data for name, data in _image_bytes(small, "train").items())


@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco(dataset: SyntheticDataset, split: str) -> None:
    path = dataset.train_json if split == "train" else dataset.val_json
    coco = COCO(str(path))
    assert sorted(coco.getCatIds()) == list(range(1, len(SHAPES) + 1))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(dataset.class_names)
    num_images = dataset.num_train_images if split == "train" else dataset.num_val_images
    num_boxes = dataset.num_train_annotations if split == "train" else dataset.num_val_annotations
    assert len(coco.imgs) == num_images
    assert len(coco.anns) == num_boxes >= num_images
    assert min(coco.imgs) == 1 and min(coco.anns) == 1  # COCOeval treats id 0 as unmatched

    for image in coco.imgs.values():
        assert image["file_name"].startswith(f"{split}/")
        with Image.open(dataset.image_root / image["file_name"]) as pixels:
            assert pixels.size == (image["width"], image["height"]) == (SIZE, SIZE)
            assert pixels.mode == "RGB"
    for ann in coco.anns.values():
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0
        assert ann["category_id"] in coco.cats
        assert ann["image_id"] in coco.imgs


def test_scales_and_classes(dataset: SyntheticDataset) -> None:
    annotations = json.loads(dataset.train_json.read_text())["annotations"]
    long_sides = np.array([max(ann["bbox"][2:]) for ann in annotations])
    # Long sides are drawn log-uniform in [6, 64] px at 128 px, so both ends are well populated.
    assert long_sides.min() <= 8
    assert np.mean(long_sides < 16) > 0.2
    assert np.mean(long_sides >= 48) > 0.05
    assert long_sides.max() <= SIZE // 2
    counts = Counter(ann["category_id"] for ann in annotations)
    assert set(counts) == set(range(1, len(SHAPES) + 1))
    aspects = [ann["bbox"][2] / ann["bbox"][3] for ann in annotations]
    assert min(aspects) < 0.75 and max(aspects) > 1.33


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("train", 0),
        ("val", 0),
        ("train", True),
        ("size", 31),
        ("size", 64.0),
        ("classes", 0),
        ("classes", len(SHAPES) + 1),
        ("max_objects", 0),
        ("seed", -1),
    ],
)
def test_bad_argument_raises(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(DataError, match=rf"^{argument}: expected"):
        make_synthetic_dataset(tmp_path, **{argument: value}, show_progress=False)
    assert not any(tmp_path.iterdir())


def test_out_dir_that_is_a_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(DataError, match=r"^out_dir: "):
        make_synthetic_dataset(path, train=1, val=1, show_progress=False)


@pytest.fixture
def data_command_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parser imports every command module; limit it to ours so this test depends on no other.
    monkeypatch.setattr(spnas.cli, "_COMMAND_MODULES", ("data",))


@pytest.mark.usefixtures("data_command_only")
def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--train", "3", "--val", "2"]
    assert spnas.cli.main([*argv, "--classes", "5", "--seed", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 train images" in out and "2 val images" in out and "5 classes" in out
    assert str(tmp_path / "train.json") in out
    assert len(json.loads((tmp_path / "train.json").read_text())["images"]) == 3
    assert len(list((tmp_path / "images" / "val").glob("*.png"))) == 2


@pytest.mark.usefixtures("data_command_only")
def test_cli_synth_bad_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--classes", "99", "--no-progress"]
    assert spnas.cli.main(argv) != 0
    err = capsys.readouterr().err
    assert "classes: expected" in err
    assert "Traceback" not in err
