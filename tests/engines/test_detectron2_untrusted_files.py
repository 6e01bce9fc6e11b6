"""Files people exchange cannot run code: detectron2 configs with python tags, pickled weights.

Each hostile file would create a marker file when loaded the unsafe way (an ``os.system``
call in a YAML python tag, a pickle ``__reduce__``). The commands must refuse them with an
error naming the file (and line), and create neither the marker nor any output. Every path
that reads weights is tried: ``MODEL.WEIGHTS``, ``spnas train --resume`` (the file
``last_checkpoint`` names), ``train-eval --init``, exports, pretraining checkpoints and the
parent weights of a search.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from spnas.cli import main
from spnas.data.synthetic import make_synthetic_dataset
from spnas.engines.detectron2 import config_path
from spnas.exceptions import WeightsError

ARCH = "BB(11,d1,d1,d1)"
WIDTH = 16

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


def payload_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle (what detectron2 reads ``.pkl`` files as) that runs ``touch marker``."""
    path.write_bytes(pickle.dumps({"model": _Payload(marker), "__author__": "x"}))
    return path


def payload_torch(path: Path, marker: Path) -> Path:
    """A ``torch.save`` file whose unpickling runs ``touch marker``."""
    torch.save({"model": _Payload(marker), "iteration": 9}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, train=4, val=2, size=64, classes=2, seed=0, show_progress=False)
    return root


def tiny_yaml(path: Path, out: Path, weights: Path | str = "", iters: int = 2) -> Path:
    """A CPU config of 64-px images and a width-16 ResNet-18, checkpointing every iteration."""
    values = {
        "_BASE_": str(config_path("faster_rcnn_spnet_fpn_cpu.yaml")),
        "MODEL": {
            "WEIGHTS": str(weights),
            "SPNAS": {"ARCH": ARCH, "BASE_WIDTH": WIDTH},
            "ROI_HEADS": {"NUM_CLASSES": 2},
        },
        "INPUT": {"MIN_SIZE_TRAIN": [64], "MAX_SIZE_TRAIN": 64, "MIN_SIZE_TEST": 64,
                  "MAX_SIZE_TEST": 64},
        "SOLVER": {"IMS_PER_BATCH": 2, "MAX_ITER": iters, "WARMUP_ITERS": 1,
                   "CHECKPOINT_PERIOD": 1},
        "TEST": {"EVAL_PERIOD": 0},
        "OUTPUT_DIR": str(out),
    }  # fmt: skip
    path.write_text(yaml.safe_dump(values))
    return path


def tiny_model_weights(config: Path, path: Path) -> Path:
    """A state dict of the detector ``config`` describes (what ``spnas export`` writes)."""
    from spnas.engines.detectron2 import get_spnas_cfg
    from spnas.engines.detectron2.trainer import SPNASTrainer

    cfg = get_spnas_cfg(config)
    cfg.MODEL.DEVICE = "cpu"
    torch.save(SPNASTrainer.build_model(cfg).state_dict(), path)
    return path


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


# ------------------------------------------------------------------ spnas train --resume
@pytest.mark.parametrize("name", ["model_0000009.pkl", "model_0000009.pth"])
def test_resume_refuses_a_checkpoint_that_runs_code(
    name: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``last_checkpoint`` names the file ``--resume`` loads: a .pkl (detectron2 reads it with
    pickle) or a .pth pickling objects must be refused like ``MODEL.WEIGHTS`` is."""
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    out.mkdir()
    make = payload_pickle if name.endswith(".pkl") else payload_torch
    checkpoint = make(out / name, marker)
    (out / "last_checkpoint").write_text(name)
    config = tiny_yaml(tmp_path / "config.yaml", out)
    code = main(["train", str(config), "--data", str(data), "--resume", "--device", "cpu"])
    error = refused(capsys, code)
    assert str(checkpoint) in error, error
    assert ("pickle" if name.endswith(".pkl") else "weights_only") in error, error
    assert not marker.exists(), "the pickle ran"
    assert not (out / "model_trained.pth").exists()


def test_allow_pickle_does_not_extend_to_the_resume_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    out.mkdir()
    trusted = tmp_path / "trusted.pkl"
    trusted.write_bytes(pickle.dumps({"model": {}, "__author__": "me"}))
    checkpoint = payload_pickle(out / "model_0000009.pkl", marker)
    (out / "last_checkpoint").write_text(checkpoint.name)
    config = tiny_yaml(tmp_path / "config.yaml", out, weights=trusted)
    argv = ["train", str(config), "--data", str(data), "--resume", "--allow-pickle"]
    error = refused(capsys, main([*argv, "--device", "cpu"]))
    assert str(checkpoint) in error, error
    assert not marker.exists(), "the pickle ran"


def test_resume_continues_from_the_last_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checkpoints spnas writes (model, optimizer, scheduler, iteration) load tensors-only."""
    out = tmp_path / "out"
    config = tiny_yaml(tmp_path / "config.yaml", out, iters=2)
    argv = ["train", str(config), "--data", str(data), "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    first = (out / "model_0000000.pth").stat().st_mtime_ns
    assert main([*argv, "--iters", "3", "--resume"]) == 0, capsys.readouterr().err
    # Iterations 0 and 1 came from the checkpoint; only iteration 2 ran.
    assert (out / "model_0000000.pth").stat().st_mtime_ns == first
    assert (out / "model_0000002.pth").is_file()
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2


def test_allow_pickle_still_reads_a_trusted_pkl(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The opt-in for ``MODEL.WEIGHTS`` keeps working (detectron2 model zoo files)."""
    out = tmp_path / "out"
    config = tiny_yaml(tmp_path / "config.yaml", out)
    state = torch.load(tiny_model_weights(config, tmp_path / "w.pth"), weights_only=True)
    trusted = tmp_path / "trusted.pkl"
    trusted.write_bytes(pickle.dumps({"model": state, "__author__": "me"}))
    config = tiny_yaml(tmp_path / "config.yaml", out, weights=trusted, iters=1)
    argv = ["train", str(config), "--data", str(data), "--device", "cpu", "--allow-pickle"]
    assert main(argv) == 0, capsys.readouterr().err


# ------------------------------------------------------------------ infer, exports
@pytest.mark.parametrize("pickled", [False, True])
def test_infer_reads_an_exported_model(
    pickled: bool, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``spnas infer`` reads the weights through spnas's loader (and a trusted .pkl with
    ``--allow-pickle``), not detectron2's."""
    config = tiny_yaml(tmp_path / "config.yaml", tmp_path / "unused")
    weights = tiny_model_weights(config, tmp_path / "model_final.pth")
    extra = []
    if pickled:
        state = torch.load(weights, weights_only=True)
        weights = tmp_path / "model_final.pkl"
        weights.write_bytes(pickle.dumps({"model": state, "__author__": "me"}))
        extra = ["--allow-pickle"]
    image = next((data / "images" / "val").iterdir())
    out = tmp_path / "drawn"
    argv = ["infer", str(config), str(weights), str(image), "--out", str(out), "--score", "0"]
    assert main([*argv, "--device", "cpu", *extra]) == 0, capsys.readouterr().err
    assert (out / f"{image.stem}.png").is_file()


def test_export_refuses_weights_that_run_code(data: Path, tmp_path: Path) -> None:
    from spnas.data.coco import DatasetSplits
    from spnas.engines import DataSpec, ModelSpec, Schedule
    from spnas.engines.detectron2 import Detectron2Engine

    marker = tmp_path / "pwned"
    weights = payload_torch(tmp_path / "model_final.pth", marker)
    spec = ModelSpec(ARCH, num_classes=2, base_width=WIDTH, fpn_channels=32, anchor_size=8)
    schedule = Schedule.fast(iters=1, min_size=64, max_size=64, device="cpu")
    data_spec = DataSpec(DatasetSplits.from_dir(data), "AP")
    with pytest.raises(WeightsError, match="weights_only") as error:
        Detectron2Engine().export(spec, weights, schedule, data_spec, tmp_path / "export")
    assert str(weights) in str(error.value)
    assert not marker.exists(), "the pickle ran"


@pytest.mark.parametrize("name", ["model_torchvision.pth", "model_torchvision.pkl"])
def test_load_torchvision_detector_refuses_a_file_that_runs_code(name: str, tmp_path: Path) -> None:
    from spnas.export import load_torchvision_detector

    marker = tmp_path / "pwned"
    make = payload_pickle if name.endswith(".pkl") else payload_torch
    path = make(tmp_path / name, marker)
    with pytest.raises(WeightsError) as error:
        load_torchvision_detector(path)
    assert str(path) in str(error.value)
    assert not marker.exists(), "the pickle ran"


# ------------------------------------------------------------------ train-eval --init
@pytest.mark.parametrize("name", ["init.pkl", "init.pth"])
def test_train_eval_init_refuses_weights_that_run_code(
    name: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    make = payload_pickle if name.endswith(".pkl") else payload_torch
    init = make(tmp_path / name, marker)
    argv = ["train-eval", "--arch", ARCH, "--width", str(WIDTH), "--data", str(data)]
    argv += ["--iters", "1", "--min-size", "64", "--max-size", "64", "--device", "cpu"]
    argv += ["--num-workers", "0", "--no-progress", "--init", str(init)]
    error = refused(capsys, main([*argv, "--out", str(tmp_path / "out")]))
    assert str(init) in error, error
    assert not marker.exists(), "the pickle ran"


# ------------------------------------------------------------------ pretraining, search
def test_pretraining_ignores_a_checkpoint_that_runs_code(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``<out>.ckpt`` is resumed from; one that pickles objects is named and started over."""
    from spnas.pretrain import PretrainConfig, pretrain

    marker = tmp_path / "pwned"
    out = tmp_path / "backbone.pth"
    checkpoint = payload_torch(tmp_path / "backbone.pth.ckpt", marker)
    config = PretrainConfig(epochs=1, base_width=WIDTH, image_size=32, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="spnas.pretrain"):
        result = pretrain(ARCH, out, data=data, config=config, show_progress=False)
    assert str(checkpoint) in caplog.text and "weights_only" in caplog.text, caplog.text
    assert not marker.exists(), "the pickle ran"
    assert result.epochs == 1 and out.is_file()


def test_reignition_refuses_parent_weights_that_run_code(data: Path, tmp_path: Path) -> None:
    """A parent's weights come from the artifact store (another machine wrote them)."""
    from spnas.arch import SerialCode
    from spnas.search import Decision, Objective, SearchConfig

    marker = tmp_path / "pwned"
    parent = payload_torch(tmp_path / "parent.pth", marker)
    config = SearchConfig.from_dict(
        {
            "study": {"name": "hostile", "workdir": str(tmp_path / "run")},
            "engine": {"name": "torchvision"},
            "data": {"dir": str(data)},
            "model": {"seed_arch": ARCH, "width": WIDTH},
        }
    ).resolved(tmp_path)
    decision = Decision("reignite", arch=SerialCode.parse(ARCH), parent=0)
    with pytest.raises(WeightsError, match="weights_only") as error:
        Objective(config).reignite(decision, parent, tmp_path / "trial")
    assert str(parent) in str(error.value)
    assert not marker.exists(), "the pickle ran"
