"""The exported ``config.yaml`` loads under the detectron2 0.6 sources and upstream detectron2.

The two differ in their keys: upstream has ``DATALOADER.REPEAT_SQRT`` (and more), which the
0.6 sources refuse. The test stands in for "the other version" by adding a key to, or removing
one from, detectron2's defaults (``detectron2.config.get_cfg``) while exporting or loading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

import detectron2.config
from detectron2.config import CfgNode

from spnas.data.coco import DatasetSplits
from spnas.engines import DataSpec
from spnas.engines.detectron2 import Detectron2Engine
from spnas.engines.detectron2.config import get_spnas_cfg
from spnas.search import SearchConfig

ORIGINAL_GET_CFG = detectron2.config.get_cfg


def upstream_get_cfg() -> CfgNode:
    """detectron2's defaults with a key only upstream detectron2 has."""
    cfg = ORIGINAL_GET_CFG()
    cfg.DATALOADER.REPEAT_SQRT = True
    return cfg


def older_get_cfg() -> CfgNode:
    """detectron2's defaults without a key that another version lacks."""
    cfg = ORIGINAL_GET_CFG()
    del cfg.DATALOADER["REPEAT_THRESHOLD"]
    return cfg


def export_config(tmp_path: Path) -> Path:
    """Export a width-8 ResNet-18 detector as ``spnas export`` does (Detectron2Engine.export)."""
    import torch

    from spnas.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", train=2, val=2, size=32, show_progress=False)
    config = SearchConfig.from_dict(
        {
            "study": {"name": "export"},
            "data": {"dir": str(tmp_path / "data")},
            "model": {"seed_arch": "BB(11,d1,d1,d1)", "width": 8},
            "schedule": {"iters": 1, "min_size": 32, "max_size": 32, "device": "cpu"},
        }
    ).resolved(tmp_path)
    spec = config.model_spec(config.seed_arch, None, 2)
    engine = Detectron2Engine()
    weights = tmp_path / "model_final.pth"
    torch.save(engine.build_model(spec).state_dict(), weights)
    data = DataSpec(DatasetSplits.from_dir(config.data.dir), config.data.metric)
    engine.export(spec, weights, config.final_schedule, data, tmp_path / "export")
    return tmp_path / "export" / "config.yaml"


@pytest.mark.parametrize(
    ("written_under", "loaded_under"),
    [(upstream_get_cfg, ORIGINAL_GET_CFG), (ORIGINAL_GET_CFG, older_get_cfg)],
    ids=["upstream-to-0.6", "0.6-to-other"],
)
def test_exported_config_loads_under_another_detectron2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    written_under: Callable[[], CfgNode],
    loaded_under: Callable[[], CfgNode],
) -> None:
    monkeypatch.setattr(detectron2.config, "get_cfg", written_under)
    path = export_config(tmp_path)
    monkeypatch.setattr(detectron2.config, "get_cfg", loaded_under)
    cfg = get_spnas_cfg(str(path))  # was: KeyError: Non-existent config key
    assert cfg.MODEL.SPNAS.ARCH == "BB(11,d1,d1,d1)" and cfg.MODEL.SPNAS.BASE_WIDTH == 8
    assert str(tmp_path / "model_final.pth") == cfg.MODEL.WEIGHTS
    assert cfg.INPUT.MIN_SIZE_TEST == 32
    # The training device (cpu here) is not baked in: the predictor's device is the user's.
    assert "DEVICE" not in path.read_text()
    assert cfg.MODEL.DEVICE == loaded_under().MODEL.DEVICE
    # Stock detectron2 loads it as the module docstring of spnas.export says.
    stock = loaded_under()
    stock.set_new_allowed(True)
    stock.merge_from_file(str(path))
    assert stock.MODEL.SPNAS.ARCH == "BB(11,d1,d1,d1)"
    # … and builds it, with the pooler scaled to its 32 px images (InputScaledROIHeads), on
    # the device its user picks (detectron2's default is cuda).
    from detectron2.modeling import build_model

    stock.MODEL.DEVICE = "cpu"
    pooler = build_model(stock).roi_heads.box_pooler
    assert pooler.canonical_box_size == pytest.approx(224 * 32 / 800)
