"""The README's path from COCO to ``spnas infer`` on fully trained weights, command by command.

The commands are read from README.md's section "From COCO to a trained, searched detector" and
run by bash in that order, on the miniature COCO release of the ``mini_coco`` fixture, so the
README cannot show a command that does not work. The test changes sizes only, each listed in
:data:`SIZES` (which must stay in the README's text) and :data:`TOY` (merged into the README's
study YAML); :data:`SKIPPED` lists the one command that is not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SECTION = "## From COCO to a trained, searched detector"
#: The file name the README gives its study YAML.
STUDY_YAML = "coco-r50.yaml"

#: Sizes the test changes in the README's commands: ``{COCO}`` is the fixture's folder.
SIZES = {
    "/data/coco": "{COCO}",
    # Nothing is downloaded at test time: a randomly initialised ResNet-50 (same keys and
    # shapes) whose residual branches start at zero, so that its activations stay finite under
    # the README's FrozenBN (random weights through 16 frozen blocks: loss 8e9, diverged).
    "weights='IMAGENET1K_V1'": "weights=None, zero_init_residual=True",
    # 2 shared cores, no GPU: one worker with one thread, one training process.
    "--workers 8": "--workers 1 --threads 1",
    "--num-gpus 8": "--num-gpus 1",
}
#: Not run: the dashboard is a server that runs until stopped.
SKIPPED = ("spnas dashboard",)
#: Merged into the README's study YAML: a toy schedule on 96 px images. The seed stays
#: ResNet-50 at full width, as the torchvision weights of step 2 fix it.
TOY = {
    "engine": {"show_progress": False},
    "model": {"fpn_channels": 16, "anchor_size": 8},
    "serial": {"n_stuck": 1, "n_rounds": 0, "max_trials": 1},
    "parallel": {"n_stuck": 1, "max_trials": 1, "budget_ratio": 1.2},
    "schedule": {
        "epochs": None,
        "iters": 2,
        "ims_per_batch": 2,
        "warmup_iters": 1,
        "min_size": 96,
        "max_size": 96,
        "num_workers": 0,
        "device": "cpu",
    },
    # Verification retrains from scratch: the seed is pretrained on crops of the data first.
    "reignite": {"epochs": 1, "image_size": 16, "batch_size": 16},
    "search": {"noise_repeats": 1, "wait_seconds": 0.5},
    "verify": {"repeats": 1},
    # The full schedule drops the rate at 16/24 and 22/24 of training: 6 iterations keep the two
    # steps apart (at 2 both are iteration 1, which fvcore's MultiStepParamScheduler refuses).
    "final": {"schedule": {"epochs": None, "iters": 6}},
}


def _section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end > 0 else None]


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _shims(bin_dir: Path) -> None:
    """``spnas`` and ``python`` on PATH: this interpreter, importing this checkout."""
    bin_dir.mkdir()
    for name, args in (("spnas", "-m spnas"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} {args} "$@"\n')
        shim.chmod(0o755)


@pytest.mark.slow
def test_readme_coco_commands_run_on_a_miniature_coco(mini_coco, tmp_path):
    blocks = re.findall(r"```(\w+)\n(.*?)```", _section(), flags=re.DOTALL)
    scripts = [body for lang, body in blocks if lang == "bash"]
    (study,) = (body for lang, body in blocks if lang == "yaml")
    commands = "\n".join(scripts)
    for size in SIZES:
        assert size in commands, f"the README's COCO commands no longer hold {size!r}"
    for skipped in SKIPPED:
        assert skipped in commands
    assert f"spnas search {STUDY_YAML}" in commands
    assert "spnas infer export/config.yaml trained/model_trained.pth" in commands

    work = tmp_path / "work"
    work.mkdir()
    (work / "detectron_configs").symlink_to(REPO / "detectron_configs")
    shutil.copyfile(next((mini_coco / "val2017").iterdir()), work / "image.jpg")
    (work / STUDY_YAML).write_text(yaml.safe_dump(_merge(yaml.safe_load(study), TOY)))
    _shims(tmp_path / "bin")
    env = dict(
        os.environ,
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
    )
    printed = []
    for script in scripts:
        for old, new in SIZES.items():
            script = script.replace(old, new.format(COCO=mini_coco))
        lines = [ln for ln in script.splitlines() if not ln.startswith(SKIPPED)]
        run = subprocess.run(
            ["bash", "-e", "-x", "-c", "\n".join(lines)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, f"{run.stderr[-4000:]}\n{run.stdout[-2000:]}"
        printed.append(run.stdout)
    out = "".join(printed)

    assert "COCO train2017 -> val2017: 24 train images" in out
    assert (work / "datasets" / "coco" / "images" / "train2017").is_symlink()
    assert "verification (retrained from scratch, 1 seed(s) each):" in out  # spnas status
    assert {"config.yaml", "model_final.pth", "model_torchvision.pth"} <= {
        p.name for p in (work / "export").iterdir()
    }
    # spnas infer drew the boxes of the fully trained weights, which training changed.
    trained = torch.load(work / "trained" / "model_trained.pth", weights_only=True)
    searched = torch.load(work / "export" / "model_final.pth", weights_only=True)
    trained, searched = trained.get("model", trained), searched.get("model", searched)
    assert any(not torch.equal(trained[k], searched[k]) for k in searched if k in trained)
    assert re.search(r"image\.jpg: \d+ box\(es\) -> ", out), out[-2000:]
    assert (work / "drawn" / "image.png").is_file()
