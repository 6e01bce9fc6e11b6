from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import spnas.cli
from spnas.data import (
    DEFAULT_PROFILE,
    PROFILES,
    SHAPES,
    SyntheticDataset,
    SyntheticProfile,
    make_synthetic_dataset,
)
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


def test_default_profile_output_is_pinned(tmp_path: Path) -> None:
    # The digests of the generator before profiles existed: the default data set (demo, smoke
    # studies, earlier benchmark figures) must not change. Pixels are hashed decoded, so a
    # different zlib does not matter.
    dataset = make_synthetic_dataset(tmp_path, train=3, val=1, seed=0, show_progress=False)
    assert dataset.profile == DEFAULT_PROFILE == "shapes"
    assert hashlib.sha256(dataset.train_json.read_bytes()).hexdigest() == (
        "db2bd01427abe7e2d2b1e9c43adeb7b29d7ab5e6ec08b91ea3a99c9268a65926"
    )
    pixels = hashlib.sha256()
    for index in (1, 2, 3):
        with Image.open(dataset.image_root / f"train/{index:06d}.png") as image:
            pixels.update(np.asarray(image).tobytes())
    assert pixels.hexdigest() == (
        "1637d305f2acbd57151a478254dd92adc428e5e07b82826169da27389cad4157"
    )


def test_profiles_registry() -> None:
    assert {"shapes", "small-objects", "large-objects"} <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert isinstance(profile, SyntheticProfile) and profile.name == name
        assert profile.description
        assert set(profile.shapes) <= set(SHAPES) and len(set(profile.shapes)) == len(
            profile.shapes
        )
        assert 1 <= profile.min_objects <= profile.max_objects
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["shapes"].max_objects = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        PROFILES["mine"] = PROFILES["shapes"]  # type: ignore[index]


def _annotations(dataset: SyntheticDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long sides, short sides and boxes per image of the training split."""
    payload = json.loads(dataset.train_json.read_text())
    boxes = np.array([ann["bbox"] for ann in payload["annotations"]])
    per_image = Counter(ann["image_id"] for ann in payload["annotations"])
    counts = np.array([per_image[image["id"]] for image in payload["images"]])
    return boxes[:, 2:].max(axis=1), boxes[:, 2:].min(axis=1), counts


@pytest.fixture(scope="module")
def small_objects(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("small"),
        train=30,
        val=2,
        profile="small-objects",
        seed=0,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def large_objects(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("large"),
        train=30,
        val=2,
        profile="large-objects",
        seed=0,
        show_progress=False,
    )


def test_small_objects_profile(small_objects: SyntheticDataset) -> None:
    long_sides, short_sides, counts = _annotations(small_objects)
    # Measured (seeds 0 and 1, 40 images): long sides 4-12 px, median 7, 43-44 % of them at
    # most 6 px; 8-20 boxes an image (mean 13.9-14.4). The default profile has a median of
    # 20-23 px and at most 6 boxes an image.
    assert long_sides.min() >= 3 and long_sides.max() <= 12
    assert np.median(long_sides) <= 8
    assert np.mean(long_sides <= 6) > 0.3
    assert short_sides.min() >= 2
    assert counts.min() >= 7 and counts.mean() > 11
    assert small_objects.class_names == SHAPES[:4]


def test_large_objects_profile(large_objects: SyntheticDataset) -> None:
    long_sides, short_sides, counts = _annotations(large_objects)
    # Measured (seeds 0 and 1, 40 images): long sides 43-122 px, median 75-81; short sides
    # from 36 px; 1-3 boxes an image.
    assert long_sides.min() >= 0.3 * SIZE and np.median(long_sides) >= 0.5 * SIZE
    assert long_sides.max() <= SIZE
    assert short_sides.min() >= 0.2 * SIZE
    assert counts.min() >= 1 and counts.max() <= 3
    # Classes come in pairs told apart only by a hole.
    assert large_objects.class_names == ("disc", "ring", "box", "frame")


@pytest.mark.parametrize("profile", ["small-objects", "large-objects"])
def test_profile_is_deterministic_per_seed(tmp_path: Path, profile: str) -> None:
    def draw(name: str, seed: int) -> SyntheticDataset:
        return make_synthetic_dataset(
            tmp_path / name, train=3, val=1, profile=profile, seed=seed, show_progress=False
        )

    first, again, other = draw("a", 2), draw("b", 2), draw("c", 3)
    assert first.train_json.read_bytes() == again.train_json.read_bytes()
    assert _image_bytes(first, "train") == _image_bytes(again, "train")
    assert first.train_json.read_bytes() != other.train_json.read_bytes()
    assert set(_image_bytes(first, "train").values()).isdisjoint(
        _image_bytes(other, "train").values()
    )
    assert f"synthetic {profile}, train split" in first.train_json.read_text()


def test_max_objects_overrides_the_profile(tmp_path: Path) -> None:
    dataset = make_synthetic_dataset(
        tmp_path, train=6, val=1, profile="small-objects", max_objects=9, show_progress=False
    )
    assert _annotations(dataset)[2].max() <= 9


def test_unknown_profile_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^profile: expected one of shapes, .*got 'tiny'"):
        make_synthetic_dataset(tmp_path, profile="tiny", show_progress=False)
    # Below the profile's fewest objects an image.
    with pytest.raises(DataError, match=r"^max_objects: expected an integer >= 8"):
        make_synthetic_dataset(
            tmp_path, profile="small-objects", max_objects=3, show_progress=False
        )
    assert not any(tmp_path.iterdir())


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
def test_cli_synth_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--train", "2", "--val", "1"]
    assert spnas.cli.main([*argv, "--profile", "large-objects", "--no-progress"]) == 0
    assert "(large-objects)" in capsys.readouterr().out
    payload = json.loads((tmp_path / "train.json").read_text())
    assert [c["name"] for c in payload["categories"]] == ["disc", "ring", "box", "frame"]
    assert spnas.cli.main([*argv, "--profile", "tiny", "--no-progress"]) != 0
    assert "profile: expected one of" in capsys.readouterr().err


@pytest.mark.usefixtures("data_command_only")
def test_cli_synth_bad_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "--out", str(tmp_path), "--classes", "99", "--no-progress"]
    assert spnas.cli.main(argv) != 0
    err = capsys.readouterr().err
    assert "classes: expected" in err
    assert "Traceback" not in err
