"""A whole search with the real detectron2 engine on tiny settings, through the command line,
then export, inference and full training of its best network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spnas.arch import ParallelCode
from spnas.cli import main

TINY_STUDY = {
    "study": {"name": "tiny"},
    "engine": {
        "name": "detectron2",
        "config": str(
            Path(__file__).resolve().parents[2]
            / "detectron_configs"
            / "faster_rcnn_spnet_fpn_cpu.yaml"
        ),
        "show_progress": False,
    },
    "data": {"metric": "AP", "synthetic": {"train": 24, "val": 8, "size": 96, "classes": 2}},
    "model": {"seed_arch": "BB(11,d1,d1,d1)", "width": 8, "fpn_channels": 16, "anchor_size": 8},
    "space": {"min_blocks": 8, "max_blocks": 12, "max_stages": 5, "max_subnets": 1},
    "serial": {"n_mutations": 1, "n_stuck": 1, "n_rounds": 1, "max_trials": 1},
    "parallel": {"n_stuck": 1, "budget_ratio": 3.0, "max_trials": 1},
    "reignite": {"epochs": 1, "image_size": 16, "batch_size": 16},
    "schedule": {
        "iters": 6,
        "ims_per_batch": 2,
        "warmup_iters": 2,
        "min_size": 96,
        "max_size": 96,
        "num_workers": 0,
        "device": "cpu",
    },
    "verify": {"repeats": 2, "schedule": {"iters": 8}},
    "search": {"wait_seconds": 0.5},
}


def _run_python(script: str) -> int:
    """Run ``script`` in a fresh interpreter; its last line of output, as an int."""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.strip().splitlines()[-1])


#: The outline colours of ``spnas infer`` (:func:`spnas.cli.infer.draw`).
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def _assert_boxes_drawn(original: Path, drawn: Path) -> None:
    """``drawn`` is ``original``'s pixels with box outlines in the palette's colours on top.

    Compares decoded pixels: the files' bytes differ anyway (different PNG compression).
    """
    from PIL import Image, ImageColor

    before = np.asarray(Image.open(original).convert("RGB"))
    after = np.asarray(Image.open(drawn).convert("RGB"))
    assert after.shape == before.shape
    changed = (after != before).any(axis=-1)
    colours = np.array([ImageColor.getrgb(c) for c in PALETTE], dtype=after.dtype)
    in_palette = (after[:, :, None, :] == colours[None, None]).all(axis=-1).any(axis=-1)
    measured = (
        f"{changed.sum()} of {changed.size} pixels changed, "
        f"{(changed & in_palette).sum()} of them to a palette colour"
    )
    # Measured (score 0: up to 100 boxes on a 96 px image): 6513 of 9216 pixels changed, 3968
    # of them (61 %) to an outline colour, most others by the captions' anti-aliasing.
    assert changed.mean() >= 0.1, measured
    assert (changed & in_palette).sum() >= 0.4 * changed.sum(), measured


@pytest.mark.slow
def test_search_runs_every_phase_with_the_real_engine(tmp_path, capsys) -> None:
    study = dict(TINY_STUDY)
    study["study"] = {"name": "tiny", "workdir": str(tmp_path / "run")}
    study["data"] = {**TINY_STUDY["data"], "dir": str(tmp_path / "data")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))

    assert main(["search", str(path), "--workers", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    storage = f"sqlite:///{tmp_path / 'run' / 'spnas.db'}"
    assert main(["status", "--study", "tiny", "--storage", storage, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)

    assert status["done"] is True and status["phase"] == "done"
    kinds = [t["kind"] for t in status["trials"]]
    # One candidate per round and phase (max_trials: 1) beside each round's control and its
    # noise repeat: Algorithm 1's whole path at equal training, in order, then verification.
    # A candidate that beat the control by more than σ_trial is re-evaluated (repeat 1).
    candidates = [t for t in status["trials"] if t["kind"] in ("serial", "parallel")]
    reevaluated = [t for t in candidates if t.get("repeat")]
    assert all(t["repeat"] == 1 for t in reevaluated)
    searched = [
        t["kind"] for t in status["trials"] if t["kind"] != "verify" and t not in reevaluated
    ]
    assert searched == [
        "seed",
        *("control", "control", "serial"),
        "reignite",
        *("control", "control", "serial"),
        "parallel_seed",
        *("control", "control", "parallel"),
    ]
    # Every trial evaluates at its end only, where no trial is pruned (Optuna's default
    # MedianPruner pruned candidates there whose AP fell under the median of earlier trials:
    # chance at 6 iterations). No trial failed or diverged.
    for trial in status["trials"]:
        assert trial["state"] == "COMPLETE" and not trial.get("diverged"), trial
    verify = status["verify"]
    networks = verify["networks"]
    assert networks[0]["role"] == "seed"
    # The best SPNet is verified under its own role, unless it has no parallel subnet: then it
    # is the serial network already verified under an earlier role (seed or a round's best).
    best_parallel = status["best"]["parallel"]
    has_subnets = ParallelCode.parse(best_parallel["parallel"]).total > 0
    spnet = (best_parallel["arch"], best_parallel["parallel"])
    assert (networks[-1]["role"] == "spnet") == has_subnets, (networks, spnet)
    assert (best_parallel["arch"], has_subnets) in {
        (n["arch"], n["role"] == "spnet") for n in networks
    }
    assert kinds.count("verify") == 2 * len(networks)
    assert all(None not in n["retrained_ap"] for n in networks)
    assert verify["complete"] and verify["verdict"]
    assert status["best"]["parallel"]["parallel"].startswith("(")
    assert [p["phase"] for p in status["phases"]] == [
        "seed",
        "serial round 1",
        "reignite 1",
        "serial round 2",
        "parallel",
    ]
    # Weights that can no longer be parents are deleted; the best ones stay.
    artifacts = list((tmp_path / "run" / "artifacts").iterdir())
    assert 0 < len(artifacts) < len(kinds)

    # A second `spnas search` on the finished study resumes it and has nothing left to do.
    assert main(["search", str(path), "--workers", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["status", "--study", "tiny", "--storage", storage, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [t["number"] for t in again["trials"]] == [t["number"] for t in status["trials"]]

    # The dashboard has a markdown note per trial and the three search figures.
    import optuna

    from spnas.report import FIGURE_IDS

    study = optuna.load_study(study_name="tiny", storage=storage)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    for figure_id in FIGURE_IDS.values():
        assert any(key.startswith(f"dashboard:plot_data:{figure_id}:") for key in attrs)
    noted = {key.split(":")[1] for key in attrs if ":note_str:" in key and attrs[key]}
    assert len(noted) == len(status["trials"])

    # Export the best network; stock detectron2 in a fresh process loads it and predicts.
    out = tmp_path / "export"
    assert main(["export", "--study", "tiny", "--storage", storage, "--out", str(out)]) == 0
    capsys.readouterr()
    exported = {p.name for p in out.iterdir()}
    assert {
        "config.yaml",
        "model_final.pth",
        "model_torchvision.pth",
        "spnet_backbone.pth",
        "spnet.json",
    } <= exported
    image = next((tmp_path / "data" / "images" / "val").iterdir())
    script = (
        "import spnas, numpy as np\n"
        "from PIL import Image\n"
        "from detectron2.config import get_cfg\n"
        "from detectron2.engine import DefaultPredictor\n"
        "cfg = get_cfg(); cfg.set_new_allowed(True)\n"
        f"cfg.merge_from_file({str(out / 'config.yaml')!r})\n"
        "cfg.MODEL.DEVICE = 'cpu'  # the exported config names no device\n"
        "cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0\n"
        f"image = np.asarray(Image.open({str(image)!r}).convert('RGB'))[:, :, ::-1]\n"
        "print(len(DefaultPredictor(cfg)(image)['instances']))\n"
    )
    assert _run_python(script) > 0
    # The torchvision file predicts in a fresh process without detectron2.
    script = (
        "import sys; sys.modules['detectron2'] = None  # importing it would fail\n"
        "from PIL import Image\n"
        "from torchvision.transforms.functional import to_tensor\n"
        "from spnas.export import load_torchvision_detector\n"
        f"model = load_torchvision_detector({str(out / 'model_torchvision.pth')!r})\n"
        "model.roi_heads.score_thresh = 0.0\n"
        f"image = to_tensor(Image.open({str(image)!r}).convert('RGB'))\n"
        "print(len(model([image])[0]['boxes']))\n"
    )
    assert _run_python(script) > 0

    # The exported SPNet backbone rebuilds from spnet.json alone.
    from spnas.modeling import SPNet

    backbone = SPNet(**json.loads((out / "spnet.json").read_text()))
    backbone.load_state_dict(torch.load(out / "spnet_backbone.pth", weights_only=True))

    drawn = tmp_path / "drawn"
    config, weights = str(out / "config.yaml"), str(out / "model_final.pth")
    capsys.readouterr()
    assert main(["infer", config, weights, str(image), "--out", str(drawn), "--score", "0"]) == 0
    printed = capsys.readouterr().out
    boxes = int(re.search(r": (\d+) box\(es\) -> ", printed).group(1))
    assert boxes > 0, printed
    _assert_boxes_drawn(image, drawn / f"{image.stem}.png")

    capsys.readouterr()
    assert main(["train", config, "--iters", "2", "--out", str(tmp_path / "full"), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert "AP" in trained["metrics"] and Path(trained["weights"]).is_file()


@pytest.mark.slow
def test_torchvision_engine_search_exports_a_torchvision_detector(tmp_path, capsys) -> None:
    study = dict(TINY_STUDY)
    study["study"] = {"name": "tiny-tv", "workdir": str(tmp_path / "run")}
    study["engine"] = {"name": "torchvision", "show_progress": False}
    study["data"] = {**TINY_STUDY["data"], "dir": str(tmp_path / "data")}
    study["serial"] = {**TINY_STUDY["serial"], "n_rounds": 0}
    study["parallel"] = {**TINY_STUDY["parallel"], "max_trials": 0}
    path = tmp_path / "tiny-tv.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["search", str(path), "--workers", "1", "--threads", "1"]) == 0
    storage = f"sqlite:///{tmp_path / 'run' / 'spnas.db'}"

    out = tmp_path / "export"
    capsys.readouterr()
    assert main(["export", "--study", "tiny-tv", "--storage", storage, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not written: config.yaml" in printed
    assert not (out / "config.yaml").exists()

    from spnas.export import load_torchvision_detector

    model = load_torchvision_detector(out / "model_torchvision.pth")
    model.roi_heads.score_thresh = 0.0
    image = next((tmp_path / "data" / "images" / "val").iterdir())
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    with torch.no_grad():
        boxes = model([to_tensor(Image.open(image).convert("RGB"))])[0]["boxes"]
    assert len(boxes) > 0
