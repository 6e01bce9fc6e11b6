"""detectron2 0.6 installed without its compiled ops works after spnas's compat layer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import spnas  # applies the compat layer before detectron2 is imported below
from spnas.engines.detectron2 import compat

_REPO_ROOT = Path(__file__).resolve().parents[3]
_HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
needs_detectron2 = pytest.mark.skipif(
    not _HAS_DETECTRON2,
    reason="detectron2 is not installed (tools/install_detectron2.sh installs it)",
)

# Run in a fresh interpreter: what matters is the import order a user's script has.
_FRESH_IMPORT = """
import json, sys
import spnas
result = {"torch_imported_by_spnas": "torch" in sys.modules}
import detectron2.modeling, detectron2.engine, detectron2.evaluation, detectron2.data
import detectron2.checkpoint
from spnas.engines.detectron2 import compat
result["has_compiled_ops"] = compat.has_compiled_ops()
ops_module = sys.modules["detectron2._C"]
compat.apply()
compat.apply()
result["ops_module_kept"] = sys.modules["detectron2._C"] is ops_module
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
result["registered"] = sorted(
    name
    for registry in (BACKBONE_REGISTRY, ROI_HEADS_REGISTRY)
    for name, obj in registry._obj_map.items()
    if obj.__module__.startswith("spnas.")
)
import PIL.Image
result["linear_is_bilinear"] = PIL.Image.LINEAR == PIL.Image.BILINEAR
errors = {}
if not result["has_compiled_ops"]:
    from detectron2 import _C
    for op in ("deform_conv_forward", "box_iou_rotated", "COCOevalEvaluateImages"):
        try:
            getattr(_C, op)
        except compat.MissingCompiledOpError as e:
            errors[op] = [e.op, str(e)]
result["errors"] = errors
print(json.dumps(result))
"""


def _run_fresh(code: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=_REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_import() -> dict[str, Any]:
    return _run_fresh(_FRESH_IMPORT)


@needs_detectron2
def test_import_spnas_then_detectron2_modules(fresh_import: dict[str, Any]) -> None:
    # The subprocess got this far only if every detectron2 module imported.
    assert fresh_import["torch_imported_by_spnas"] is False
    assert fresh_import["linear_is_bilinear"] is True
    # Stock detectron2 code can build an exported config: spnas's parts are registered.
    assert fresh_import["registered"] == [
        "InputScaledROIHeads",
        "build_spnet_backbone",
        "build_spnet_fpn_backbone",
    ]


@needs_detectron2
def test_apply_twice_keeps_the_ops_module(fresh_import: dict[str, Any]) -> None:
    assert fresh_import["ops_module_kept"] is True


@needs_detectron2
def test_missing_op_names_the_feature(fresh_import: dict[str, Any]) -> None:
    if fresh_import["has_compiled_ops"]:
        pytest.skip("detectron2 has its compiled ops here; no placeholder is installed")
    errors = fresh_import["errors"]
    assert set(errors) == {"deform_conv_forward", "box_iou_rotated", "COCOevalEvaluateImages"}
    op, message = errors["deform_conv_forward"]
    assert op == "deform_conv_forward"
    assert "deformable convolution" in message
    assert "detectron2._C.deform_conv_forward" in message
    assert "without its compiled ops" in message
    assert "rotated boxes" in errors["box_iou_rotated"][1]
    assert "use_fast_impl=False" in errors["COCOevalEvaluateImages"][1]


def test_apply_does_nothing_without_detectron2() -> None:
    # sys.modules[name] = None makes find_spec report the package as absent.
    result = _run_fresh(
        "import json, sys\n"
        "sys.modules['detectron2'] = None\n"
        "import spnas\n"
        "print(json.dumps({'patched': 'detectron2._C' in sys.modules, 'pil': 'PIL' in sys.modules}))\n"
    )
    assert result == {"patched": False, "pil": False}


def test_apply_leaves_real_compiled_ops_alone(tmp_path: Path) -> None:
    # A stand-in for an upstream build: a detectron2 package next to its own `_C` module.
    package = tmp_path / "detectron2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_C.py").write_text("REAL = True\n")
    result = _run_fresh(
        "import json, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import spnas\n"
        "from spnas.engines.detectron2 import compat\n"
        "before = 'detectron2._C' in sys.modules\n"
        "from detectron2 import _C\n"
        "print(json.dumps({'before': before, 'real': getattr(_C, 'REAL', False),\n"
        "                  'has_ops': compat.has_compiled_ops()}))\n"
    )
    assert result == {"before": False, "real": True, "has_ops": True}


@needs_detectron2
def test_placeholder_in_this_process() -> None:
    if compat.has_compiled_ops():
        pytest.skip("detectron2 has its compiled ops here; no placeholder is installed")
    from detectron2 import _C

    # Protocol probes see a plain module; ops raise an ImportError that spnas can report.
    assert not hasattr(_C, "__file__")
    assert _C.has_cuda() is False
    assert "without its compiled ops" in _C.get_compiler_version()
    with pytest.raises(compat.MissingCompiledOpError, match=r"roi_align_rotated_forward"):
        _C.roi_align_rotated_forward  # noqa: B018
    assert issubclass(compat.MissingCompiledOpError, ImportError)
    assert issubclass(compat.MissingCompiledOpError, spnas.SpnasError)


@needs_detectron2
def test_stock_faster_rcnn_runs_on_cpu() -> None:
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # Stock C4 Faster R-CNN on the smallest ResNet detectron2 builds.
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    # Untrained scores are low: keep every box so the final NMS has work to do.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, 64, 64) * 255
    with torch.no_grad():
        (output,) = model([{"image": image, "height": 64, "width": 64}])

    instances = output["instances"]
    assert instances.image_size == (64, 64)
    assert len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert boxes.shape == (len(instances), 4)
    assert torch.isfinite(boxes).all()
    assert int(instances.pred_classes.max()) < cfg.MODEL.ROI_HEADS.NUM_CLASSES
