"""Files people exchange cannot run code: detectron2 configs with python tags, pickled weights.

Each hostile file would create a marker file when loaded the unsafe way (an ``os.system``
call in a YAML python tag, a pickle ``__reduce__``). The commands must refuse them with an
error naming the file (and line), and create neither the marker nor any output.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from spnas.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Payload:
    """Pickles to ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def hostile_yaml(path: Path, marker: Path, base: Path | None = None) -> Path:
    lines = [f"_BASE_: {base}"] if base else []
    lines += [
        "MODEL:",
        "  SPNAS:",
        '    ARCH: "BB(11,d1,d1,d1)"',
        f'  META_ARCHITECTURE: !!python/object/apply:os.system ["touch {marker}"]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def weights_yaml(path: Path, weights: Path, out: Path) -> Path:
    values = {
        "MODEL": {"WEIGHTS": str(weights), "SPNAS": {"ARCH": "BB(11,d1,d1,d1)", "BASE_WIDTH": 8}},
        "OUTPUT_DIR": str(out),
    }
    path.write_text(yaml.safe_dump(values))
    return path


def refused(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    return captured.err


def test_python_tag_in_a_train_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    config = hostile_yaml(tmp_path / "evil.yaml", marker)
    out = tmp_path / "out"
    code = main(["train", str(config), "--data", str(tmp_path), "--out", str(out)])
    error = refused(capsys, code)
    assert str(config) in error and "line 4" in error and "python" in error, error
    assert not marker.exists(), "the YAML python tag ran"
    assert not out.exists()


def test_python_tag_in_a_base_config_is_refused_naming_the_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    base = hostile_yaml(tmp_path / "base.yaml", marker)
    config = tmp_path / "child.yaml"
    config.write_text(f"_BASE_: {base}\nSOLVER:\n  MAX_ITER: 3\n")
    image = tmp_path / "image.png"
    code = main(["infer", str(config), str(tmp_path / "w.pth"), str(image), "--out", "x"])
    error = refused(capsys, code)
    assert str(base) in error and "line 4" in error, error
    assert not marker.exists()


def test_pickled_model_weights_are_refused_without_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pkl"
    weights.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    out = tmp_path / "out"
    config = weights_yaml(tmp_path / "config.yaml", weights, out)
    code = main(["train", str(config), "--data", str(tmp_path)])
    error = refused(capsys, code)
    assert "MODEL.WEIGHTS" in error and str(weights) in error and "--allow-pickle" in error
    assert not marker.exists(), "the pickle ran"
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "infer"])
def test_weights_pickling_objects_are_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pth"
    torch.save({"model": _Payload(marker)}, weights)
    out = tmp_path / "out"
    config = weights_yaml(tmp_path / "config.yaml", weights, out)
    if command == "train":
        code = main(["train", str(config), "--data", str(tmp_path)])
    else:
        code = main(["infer", str(config), str(weights), "x.png", "--out", str(out)])
    error = refused(capsys, code)
    assert str(weights) in error and "weights_only" in error, error
    assert not marker.exists(), "the pickle ran"
    assert not out.exists()


def test_search_refuses_a_hostile_engine_config_before_creating_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spnas.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", train=2, val=1, size=32, classes=1, seed=0,
                           show_progress=False)  # fmt: skip
    marker = tmp_path / "pwned"
    config = hostile_yaml(tmp_path / "evil.yaml", marker)
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "study": {"name": "hostile", "workdir": str(tmp_path / "run")},
                "engine": {"name": "detectron2", "config": str(config)},
                "data": {"dir": str(tmp_path / "data")},
            }
        )
    )
    error = refused(capsys, main(["search", str(study)]))
    assert str(config) in error and "line 4" in error, error
    assert not marker.exists()
    assert not (tmp_path / "run" / "spnas.db").exists()


def test_python_tag_in_a_study_yaml_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    study = tmp_path / "study.yaml"
    study.write_text(
        f'study:\n  name: x\nsearch:\n  seed: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    error = refused(capsys, main(["search", str(study)]))
    assert str(study) in error and "line 4" in error, error
    assert not marker.exists()
