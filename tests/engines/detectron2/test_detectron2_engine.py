"""The detectron2 engine: configs, backbone registry, training, inheritance, failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from spnas.data.synthetic import make_synthetic_dataset
from spnas.engines import DataSpec, InitWeights, ModelSpec, Schedule, TrialDiverged
from spnas.engines.detectron2 import (
    Detectron2Engine,
    add_spnas_config,
    config_path,
    configure_levels,
)
from spnas.engines.detectron2.config import get_spnas_cfg
from spnas.exceptions import DataError
from spnas.pretrain import PretrainConfig, pretrain

ARCH = "BB(11,d1,d1,d1)"
WIDTH = 16
CPU_CONFIG = "faster_rcnn_spnet_fpn_cpu.yaml"


def spec(arch: str = ARCH, parallel: str | None = None) -> ModelSpec:
    return ModelSpec(
        arch, num_classes=4, parallel=parallel, base_width=WIDTH, fpn_channels=32, anchor_size=8
    )


def schedule(iters: int, **kwargs) -> Schedule:
    values = dict(
        iters=iters,
        ims_per_batch=4,
        base_lr=0.02,
        warmup_iters=10,
        min_size=128,
        max_size=128,
        num_workers=0,
        device="cpu",
    )
    values.update(kwargs)
    return Schedule.fast(**values)


class RecordingReporter:
    def __init__(self) -> None:
        self.progress_calls: list[tuple[int, int, float]] = []
        self.evaluations: list[tuple[int, dict[str, float]]] = []

    def progress(self, iteration: int, total: int, loss: float) -> None:
        self.progress_calls.append((iteration, total, loss))

    def evaluation(self, iteration: int, metrics) -> None:
        self.evaluations.append((iteration, dict(metrics)))


@pytest.fixture(scope="module")
def engine() -> Detectron2Engine:
    return Detectron2Engine(config_path(CPU_CONFIG), show_progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, train=200, val=50, size=128, classes=4, seed=0, show_progress=False
    )
    return root


@pytest.fixture(scope="module")
def pretrained(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "backbone.pth"
    config = PretrainConfig(epochs=6, base_width=WIDTH, image_size=48, seed=0)
    pretrain(ARCH, out, data=synthetic, config=config, show_progress=False)
    return out


@pytest.fixture(scope="module")
def trained(engine, synthetic, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    reporter = RecordingReporter()
    result = engine.train_eval(
        spec(),
        InitWeights(pretrained),
        schedule(300, eval_period=150),
        DataSpec.from_dir(synthetic),
        reporter,
        out_dir=out,
    )
    return result, reporter


@pytest.mark.parametrize(
    "name",
    [
        "Base-SPNet-FPN.yaml",
        "faster_rcnn_spnet_fpn_fast.yaml",
        "faster_rcnn_spnet_fpn_full.yaml",
        "cascade_rcnn_spnet_fpn_full.yaml",
        CPU_CONFIG,
    ],
)
def test_shipped_configs_load_and_build(name: str) -> None:
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = add_spnas_config(get_cfg())
    cfg.merge_from_file(str(config_path(name)))
    cfg.MODEL.SPNAS.ARCH = "BB(11,d1,d1,d1,1)"  # five stages → FPN levels p2..p6 (+ p7 pool)
    cfg.MODEL.SPNAS.BASE_WIDTH = 8
    cfg.MODEL.DEVICE = "cpu"
    configure_levels(cfg)
    assert cfg.MODEL.FPN.IN_FEATURES == ["res2", "res3", "res4", "res5", "res6"]
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6", "p7"]
    assert len(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == 6
    model = build_model(cfg).eval()
    assert "backbone.bottom_up.res6.0.conv1.weight" in model.state_dict()
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
        # Every level's grid has its declared stride: p7 pools p6, not detectron2's default p5.
        features = model.backbone(torch.rand(1, 3, 256, 256))
    assert {k: 256 // v.shape[-1] for k, v in features.items()} == {
        k: v.stride for k, v in shapes.items()
    }
    assert "instances" in outputs[0]


def test_backbones_are_registered() -> None:
    from detectron2.modeling import BACKBONE_REGISTRY

    import spnas.engines.detectron2  # noqa: F401

    names = set(BACKBONE_REGISTRY._obj_map)
    assert {"build_spnet_backbone", "build_spnet_fpn_backbone"} <= names


@pytest.mark.slow
def test_trains_from_crop_pretrained_weights_above_threshold(trained) -> None:
    result, reporter = trained
    # Measured on this 2-core CPU (300 iterations, 4 images each, 128 px, width 16): AP 4.1,
    # AP50 16.6 on the 50 held-out validation images; an untrained detector scores AP50 0.0
    # (no detection above the 0.05 score threshold). The thresholds keep a ~3x margin for
    # run-to-run and thread-count noise while still failing a detector that learned nothing.
    assert result.metrics["AP50"] >= 5.0
    assert result.metrics["AP"] >= 1.0
    assert result.iterations == 300
    assert result.images_per_second > 0
    assert result.gmacs > 0 and result.params_m > 0
    state = torch.load(result.weights, map_location="cpu", weights_only=True)
    assert "backbone.bottom_up.res2.0.conv1.weight" in state
    json.dumps(result.to_dict())
    # Evaluations at iteration 150 and at the end reach the reporter, progress every step.
    assert [it for it, _ in reporter.evaluations] == [150, 300]
    assert len(reporter.progress_calls) == 300


@pytest.mark.slow
def test_expanded_child_evaluates_like_its_parent(engine, trained, synthetic) -> None:
    result, _ = trained
    data = DataSpec.from_dir(synthetic)
    sched = schedule(1)
    parent_ap = engine.evaluate(spec(), InitWeights(result.weights), sched, data)["AP"]
    child = engine.evaluate(
        spec("BB(11,d11,d1,d1)"),
        InitWeights(result.weights, parent_arch=ARCH, ops=("expand(s1,after=0)",)),
        sched,
        data,
    )
    # Expansion is an exact identity in eval mode, so the detections are the same.
    assert math.isclose(child["AP"], parent_ap, abs_tol=0.1)
    assert parent_ap > 0


@pytest.mark.slow
def test_divergence_ends_the_trial_and_the_engine_stays_usable(
    engine, synthetic, pretrained, tmp_path
) -> None:
    data = DataSpec.from_dir(synthetic)
    with pytest.raises(TrialDiverged, match="diverged"):
        engine.train_eval(
            spec(),
            InitWeights(pretrained),
            schedule(40, base_lr=50.0),
            data,
            out_dir=tmp_path / "a",
        )
    result = engine.train_eval(
        spec(), InitWeights(pretrained), schedule(3), data, out_dir=tmp_path / "b"
    )
    assert result.weights.is_file()


@pytest.mark.slow
def test_torchvision_conversion_keeps_the_accuracy(synthetic, trained) -> None:
    from spnas.engines.detectron2.engine import apply_spec
    from spnas.engines.detectron2.to_torchvision import convert_state_dict, torchvision_layout
    from spnas.engines.torchvision import build_faster_rcnn
    from spnas.engines.torchvision.evaluation import evaluate_detector

    result, _ = trained
    cfg = apply_spec(get_spnas_cfg(str(config_path(CPU_CONFIG))), spec())
    configure_levels(cfg)
    layout = torchvision_layout(cfg)
    model = build_faster_rcnn(layout)
    state = torch.load(result.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(state, layout))
    data = DataSpec.from_dir(synthetic)
    metrics = evaluate_detector(model, data.splits.load("val"), data, torch.device("cpu"))
    # Measured on this 2-core CPU: AP 3.89 in detectron2 and 3.89 after conversion (2.47 with
    # torchvision's rounded anchors and unaligned RoIAlign instead of detectron2's geometry).
    assert metrics["AP"] == pytest.approx(result.metrics["AP"], abs=0.05)
    assert metrics["AP50"] == pytest.approx(result.metrics["AP50"], abs=0.1)


@pytest.mark.slow
def test_lamr_metric(engine, synthetic, trained) -> None:
    result, _ = trained
    data = DataSpec.from_dir(synthetic, metric="LAMR")
    metrics = engine.evaluate(spec(), InitWeights(result.weights), schedule(1), data)
    assert 0.0 <= metrics["LAMR"] <= 1.0
    assert "AP" in metrics


@pytest.mark.parametrize("iters", [2, 3, 5, 24])
def test_a_short_full_schedule_builds_its_lr_scheduler(engine, synthetic, tmp_path, iters) -> None:
    """At 2 iterations both LR drops (16/24, 22/24) rounded onto iteration 1, and fvcore refused
    the schedule ("Total num_updates must be greater than length of param schedule")."""
    from spnas.engines.detectron2.trainer import SPNASTrainer

    full = Schedule.full(iters=iters, ims_per_batch=4, min_size=128, max_size=128, device="cpu")
    cfg = engine.build_cfg(spec(), full, DataSpec.from_dir(synthetic), tmp_path)
    assert list(cfg.SOLVER.STEPS) == sorted(set(cfg.SOLVER.STEPS))
    assert all(0 < step < iters for step in cfg.SOLVER.STEPS)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=full.base_lr)
    scheduler = SPNASTrainer.build_lr_scheduler(cfg, optimizer)
    for _ in range(iters):  # the whole run, one LR per iteration
        optimizer.step()
        scheduler.step()
    if iters == 24:
        assert cfg.SOLVER.STEPS == (16, 22)


def test_bad_dataset_names_file_and_record(engine, synthetic, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "images").symlink_to(synthetic / "images")
    train = json.loads((synthetic / "train.json").read_text())
    train["images"][3]["file_name"] = "train/missing.png"
    (broken / "train.json").write_text(json.dumps(train))
    (broken / "val.json").write_text((synthetic / "val.json").read_text())
    with pytest.raises(DataError, match=r"images\[3\].*missing\.png"):
        engine.train_eval(spec(), None, schedule(1), DataSpec.from_dir(broken), out_dir=tmp_path)
    (broken / "train.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"train\.json.*malformed JSON at line 1"):
        engine.train_eval(spec(), None, schedule(1), DataSpec.from_dir(broken), out_dir=tmp_path)


def test_train_eval_cli_prints_trial_result_json(synthetic, pretrained, tmp_path, capsys) -> None:
    from spnas.cli import main

    code = main(
        [
            "train-eval",
            "--engine",
            "detectron2",
            "--config",
            str(config_path(CPU_CONFIG)),
            "--arch",
            ARCH,
            "--width",
            str(WIDTH),
            "--fpn-channels",
            "32",
            "--anchor-size",
            "8",
            "--data",
            str(synthetic),
            "--iters",
            "2",
            "--ims-per-batch",
            "2",
            "--min-size",
            "128",
            "--max-size",
            "128",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--init",
            str(pretrained),
            "--out",
            str(tmp_path),
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert "AP" in result["metrics"] and result["iterations"] == 2
    assert Path(result["weights"]).is_file()


def test_train_eval_cli_rejects_a_bad_code(synthetic, tmp_path, capsys) -> None:
    from spnas.cli import main

    code = main(
        ["train-eval", "--arch", "BB(1x)", "--data", str(synthetic), "--out", str(tmp_path)]
    )
    assert code == 2
    assert "column 5" in capsys.readouterr().err
