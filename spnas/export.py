"""Exporting the best network of a search for detectron2, torchvision and plain PyTorch.

``export_best`` writes, into one folder:

- ``config.yaml`` — a detectron2 config of the detector (``MODEL.SPNAS`` keys, the study's full
  schedule, ``SPNAS.DATA_DIR`` pointing at the study's data, ``MODEL.WEIGHTS`` below); only the
  keys that differ from detectron2's defaults, so that it loads under the detectron2 0.6
  sources and upstream detectron2 alike;
- ``model_final.pth`` — the trained detector's state dict, as its engine trained it;
- ``model_torchvision.pth`` — the detector as torchvision's ``FasterRCNN`` (layout + weights
  in one file; converted from detectron2 when the study trained with it);
- ``spnet_backbone.pth`` + ``spnet.json`` — the SPNet backbone alone, rebuilt with
  ``SPNet(**json.load(open("spnet.json")))`` and ``load_state_dict``;
- ``classes.json`` — the category names, for drawing predictions.

Stock detectron2 loads the config after ``import spnas`` (which registers the backbone)::

    cfg = get_cfg(); cfg.set_new_allowed(True); cfg.merge_from_file("export/config.yaml")
    predictor = DefaultPredictor(cfg)

torchvision users load the detector with :func:`load_torchvision_detector`::

    model = spnas.export.load_torchvision_detector("export/model_torchvision.pth")
    boxes = model([image])[0]["boxes"]          # image: float RGB tensor in [0, 1]

Studies trained with the ``torchvision`` engine get no ``config.yaml`` (their heads are
torchvision's); detectors that torchvision cannot express (cascade heads) get no
``model_torchvision.pth``, and the export says why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spnas.data.coco import DatasetSplits
from spnas.engines.base import DataSpec, ModelSpec
from spnas.engines.torchvision_engine import load_detector as load_torchvision_detector
from spnas.engines.torchvision_engine import save_detector
from spnas.exceptions import ConfigError
from spnas.storage import make_artifact_store

if TYPE_CHECKING:
    from detectron2.config import CfgNode

    from spnas.engines.detectron2 import Detectron2Engine
    from spnas.search import SearchConfig

__all__ = ["ExportResult", "export_best", "load_torchvision_detector"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where :func:`export_best` wrote the best network (``None``: not written, see
    ``skipped``)."""

    directory: Path
    weights: Path
    backbone: Path
    config: Path | None
    torchvision: Path | None
    trial: int
    arch: str
    parallel: str | None
    value: float
    skipped: tuple[str, ...] = ()


def export_best(study_name: str, storage_url: str, out_dir: str | Path) -> ExportResult:
    """Export the best SPNet of a finished (or running) search (the best SerialNet if the
    parallel phase has no result yet).

    Raises:
        ConfigError: when the search has no completed trial.
        WeightsError: when the best trial's weights are gone from the artifact store.
    """
    from spnas.morphism import find_backbone
    from spnas.search import SearchState, load_search_study
    from spnas.search._objective import build_search_engine, fetch_weights

    study, config = load_search_study(study_name, storage_url)
    state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
    best = state.best_parallel or state.best_serial
    if best is None:
        raise ConfigError(f"study {study_name!r} has no completed trial to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = fetch_weights(
        study, best.number, make_artifact_store(config.study.artifacts), out / "model_final.pth"
    )
    splits = DatasetSplits.from_dir(config.data.dir)
    train = splits.load("train", check_images=False)
    spec = config.model_spec(best.arch, best.parallel, len(train.categories))
    engine = build_search_engine(config)
    trained = torch.load(weights, map_location="cpu", weights_only=True)

    skipped: list[str] = []
    config_file: Path | None = None
    if config.engine.name == "detectron2":
        from spnas.engines.detectron2.to_torchvision import convert_state_dict, torchvision_layout

        config_file = out / "config.yaml"
        cfg = _write_detectron2_config(engine, spec, config, splits, weights, config_file)
        model = engine.build_model(spec, cfg)
        model.load_state_dict(trained)
        try:
            layout = torchvision_layout(cfg)
            detector_state = convert_state_dict(trained, layout)
        except ConfigError as exc:
            layout = None
            skipped.append(f"model_torchvision.pth: {exc}")
    else:
        layout = engine.layout(spec, config.final_schedule)
        model = engine.build_model(spec, config.final_schedule)
        model.load_state_dict(trained)
        detector_state = trained
        skipped.append("config.yaml: the study trained torchvision heads, not detectron2 ones")

    torchvision_file: Path | None = None
    if layout is not None:
        torchvision_file = save_detector(detector_state, layout, out / "model_torchvision.pth")
    _, backbone = find_backbone(model)
    backbone_file = out / "spnet_backbone.pth"
    torch.save({k: v.cpu() for k, v in backbone.state_dict().items()}, backbone_file)
    (out / "spnet.json").write_text(
        json.dumps(
            {
                "code": str(best.arch),
                "parallel": None if best.parallel is None else str(best.parallel),
                "base_width": spec.base_width,
                "stem": spec.stem,
                "norm": spec.norm,
                "xb_groups": spec.xb_groups,
            },
            indent=2,
        )
    )
    (out / "classes.json").write_text(json.dumps(list(train.class_names)))
    for reason in skipped:
        _logger.warning("not written: %s", reason)
    return ExportResult(
        directory=out,
        weights=weights,
        backbone=backbone_file,
        config=config_file,
        torchvision=torchvision_file,
        trial=best.number,
        arch=str(best.arch),
        parallel=None if best.parallel is None else str(best.parallel),
        value=best.value,
        skipped=tuple(skipped),
    )


def _write_detectron2_config(
    engine: Detectron2Engine,
    spec: ModelSpec,
    config: SearchConfig,
    splits: DatasetSplits,
    weights: Path,
    path: Path,
) -> CfgNode:
    """Write the detectron2 config of the exported detector; returns it."""
    data = DataSpec(splits, config.data.metric, config.data.lamr_category)
    cfg = engine.build_cfg(spec, config.final_schedule, data, path.parent / "train")
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.SPNAS.DATA_DIR = str(Path(config.data.dir).resolve())
    cfg.MODEL.WEIGHTS = str(weights.resolve())
    cfg.MODEL.DEVICE = "cpu"
    path.write_text(_changed_keys(cfg).dump())
    return cfg


def _changed_keys(cfg: CfgNode) -> CfgNode:
    """The keys of ``cfg`` that detectron2's defaults (``get_cfg()``) lack or hold otherwise.

    A full dump names every key of the detectron2 it was written under, and each detectron2
    refuses the keys it does not know (``DATALOADER.REPEAT_SQRT``, written by upstream
    detectron2, is a ``KeyError`` for the 0.6 sources). The keys a config changes exist in
    both, so this config loads under either.
    """
    from detectron2.config import CfgNode, get_cfg

    def changed(node: CfgNode, defaults: CfgNode | None) -> dict:
        out = {}
        for key, value in node.items():
            default = None if defaults is None else defaults.get(key)
            if isinstance(value, CfgNode):
                sub = changed(value, default if isinstance(default, CfgNode) else None)
                if sub or default is None:
                    out[key] = sub
            elif defaults is None or key not in defaults or default != value:
                out[key] = value
        return out

    return CfgNode(changed(cfg, get_cfg()))
