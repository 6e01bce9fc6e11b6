"""``link_coco``: COCO as it ships becomes a data set directory without copying an image."""

from __future__ import annotations

import json
import shutil

import pytest

from spnas.data import link_coco
from spnas.data.coco import load_coco
from spnas.exceptions import DataError


def _boxes_by_name(dataset) -> dict[str, tuple]:
    return {img.path.name: (img.boxes, img.category_ids) for img in dataset}


def test_link_coco_reads_the_same_images_and_boxes_through_two_links(mini_coco, tmp_path):
    out = tmp_path / "coco"
    splits = link_coco(mini_coco, out)

    assert splits.train_json == out / "train.json" and splits.val_json == out / "val.json"
    for split, name in (("train", "train2017"), ("val", "val2017")):
        link = out / "images" / name
        assert link.is_symlink() and link.resolve() == (mini_coco / name).resolve()
        source = load_coco(mini_coco / "annotations" / f"instances_{name}.json", mini_coco / name)
        linked = splits.load(split)  # checks that every image file is found
        assert len(linked) == len(source) > 0
        assert linked.num_annotations == source.num_annotations > 0
        assert linked.class_names == source.class_names
        assert _boxes_by_name(linked) == _boxes_by_name(source)
        assert all(img.path.parent == splits.image_root / name for img in linked)
    # No image was copied: the only files under out/ are the two annotation files.
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sorted(p.name for p in files) == ["train.json", "val.json"]


def test_link_coco_keeps_everything_but_the_file_name(mini_coco, tmp_path):
    link_coco(mini_coco, tmp_path / "coco")
    source = json.loads((mini_coco / "annotations" / "instances_val2017.json").read_text())
    linked = json.loads((tmp_path / "coco" / "val.json").read_text())
    for image in source["images"]:
        image["file_name"] = f"val2017/{image['file_name']}"
    assert linked == source


def test_link_coco_runs_again_over_its_own_output(mini_coco, tmp_path):
    link_coco(mini_coco, tmp_path / "coco")
    splits = link_coco(mini_coco, tmp_path / "coco")
    assert len(splits.load("val")) == 8


def test_link_coco_takes_other_split_names(mini_coco, tmp_path):
    coco = tmp_path / "coco2014"
    shutil.copytree(mini_coco, coco, symlinks=True)
    (coco / "val2017").rename(coco / "minival2014")
    (coco / "annotations" / "instances_val2017.json").rename(
        coco / "annotations" / "instances_minival2014.json"
    )
    splits = link_coco(coco, tmp_path / "out", val="minival2014")
    assert splits.load("val").images[0].path.parent.name == "minival2014"


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("annotations/instances_val2017.json", "has no annotation file '{root}/annotations/"),
        ("val2017", "has no image folder val2017/ ('{root}/val2017')"),
        ("train2017", "has no image folder train2017/ ('{root}/train2017')"),
    ],
)
def test_a_missing_split_is_named_before_anything_is_written(mini_coco, tmp_path, remove, message):
    coco = tmp_path / "coco"
    shutil.copytree(mini_coco, coco)
    target = coco / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError, match="expected <split>/") as info:
        link_coco(coco, tmp_path / "out")
    assert message.format(root=coco) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bad_inputs_name_what_was_expected(mini_coco, tmp_path):
    with pytest.raises(DataError, match=r"COCO folder '.*nowhere' does not exist, expected"):
        link_coco(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DataError, match=r"COCO split '\.\./val2017': expected the name of a"):
        link_coco(mini_coco, tmp_path / "out", val="../val2017")

    broken = tmp_path / "broken"
    shutil.copytree(mini_coco, broken)
    (broken / "annotations" / "instances_val2017.json").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(DataError, match=r"instances_val2017.json': images\[0\]: missing key"):
        link_coco(broken, tmp_path / "out")

    occupied = tmp_path / "occupied"
    (occupied / "images" / "train2017").mkdir(parents=True)
    with pytest.raises(DataError, match="exists and is not a link"):
        link_coco(mini_coco, occupied)
