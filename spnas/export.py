"""Exporting the best network of a search for detectron2 and for plain PyTorch/torchvision use.

``export_best`` writes, into one folder:

- ``config.yaml`` — a detectron2 config of the detector (``MODEL.SPNAS`` keys, the study's full
  schedule, ``SPNAS.DATA_DIR`` pointing at the study's data, ``MODEL.WEIGHTS`` below);
- ``model_final.pth`` — the trained detector's state dict;
- ``spnet_backbone.pth`` + ``spnet.json`` — the SPNet backbone alone, rebuilt with
  ``SPNet(**json.load(open("spnet.json")))`` and ``load_state_dict`` (for torchvision's
  detection models, e.g. the ``torchvision`` engine's ``SPNetFPN``);
- ``classes.json`` — the category names, for drawing predictions.

Stock detectron2 loads the config after ``import spnas`` (which registers the backbone)::

    cfg = get_cfg(); cfg.set_new_allowed(True); cfg.merge_from_file("export/config.yaml")
    predictor = DefaultPredictor(cfg)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from spnas.exceptions import ConfigError
from spnas.storage import make_artifact_store


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where :func:`export_best` wrote the best network."""

    directory: Path
    config: Path
    weights: Path
    backbone: Path
    trial: int
    arch: str
    parallel: str | None
    value: float


def export_best(study_name: str, storage_url: str, out_dir: str | Path) -> ExportResult:
    """Export the best SPNet of a finished (or running) search (the best SerialNet if the
    parallel phase has no result yet).

    Raises:
        ConfigError: when the search has no completed trial, or its engine is not detectron2.
    """
    from spnas.data.coco import DatasetSplits
    from spnas.engines.base import DataSpec
    from spnas.engines.detectron2 import Detectron2Engine
    from spnas.morphism import find_backbone
    from spnas.search import SearchState, load_search_study
    from spnas.search._objective import fetch_weights

    study, config = load_search_study(study_name, storage_url)
    if config.engine.name != "detectron2":
        raise ConfigError(
            f"study {study_name!r} trained with engine {config.engine.name!r}; export writes "
            "detectron2 configs and needs a detectron2 study"
        )
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
    engine = Detectron2Engine(config.engine.config, opts=list(config.engine.opts))
    data = DataSpec(splits, config.data.metric, config.data.lamr_category)
    cfg = engine.build_cfg(spec, config.final_schedule, data, out / "train")
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.SPNAS.DATA_DIR = str(Path(config.data.dir).resolve())
    cfg.MODEL.WEIGHTS = str(weights.resolve())
    cfg.MODEL.DEVICE = "cpu"
    config_file = out / "config.yaml"
    config_file.write_text(cfg.dump())

    model = engine.build_model(spec, cfg)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
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
    return ExportResult(
        directory=out,
        config=config_file,
        weights=weights,
        backbone=backbone_file,
        trial=best.number,
        arch=str(best.arch),
        parallel=None if best.parallel is None else str(best.parallel),
        value=best.value,
    )
