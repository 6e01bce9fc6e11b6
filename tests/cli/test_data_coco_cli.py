"""``spnas data coco``: the command over :func:`spnas.data.link_coco`."""

from __future__ import annotations

import shutil

from spnas.cli import main


def test_data_coco_prints_what_it_linked(mini_coco, tmp_path, capsys):
    out = tmp_path / "coco"
    assert main(["data", "coco", "--coco", str(mini_coco), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("COCO train2017 -> val2017: 24 train images (")
    assert ", 8 val images (" in printed
    assert f"images under {out / 'images'}" in printed
    assert (out / "images" / "val2017").is_symlink()


def test_data_coco_exits_2_naming_the_missing_file(mini_coco, tmp_path, capsys):
    coco = tmp_path / "coco"
    shutil.copytree(mini_coco, coco)
    (coco / "annotations" / "instances_train2017.json").unlink()
    assert main(["data", "coco", "--coco", str(coco), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    missing = coco / "annotations" / "instances_train2017.json"
    assert err.startswith("spnas data: error: COCO folder")
    assert f"has no annotation file '{missing}'" in err
