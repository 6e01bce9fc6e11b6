"""Exporting the best network of a search for detectron2, torchvision and plain PyTorch.

``export_best`` writes, into one folder:

- ``config.yaml`` — a detectron2 config of the detector (``MODEL.SPNAS`` keys, the study's full
  schedule, ``SPNAS.DATA_DIR`` pointing at the study's data, ``MODEL.WEIGHTS`` below); only the
  keys that differ from detectron2's defaults, so that it loads under the detectron2 0.6
  sources and upstream detectron2 alike; no ``MODEL.DEVICE``: where it runs is the user's
  choice (``spnas infer --device``);
- ``model_final.pth`` — the trained detector's state dict, as its engine trained it;
- ``model_torchvision.pth`` — the detector as torchvision's ``FasterRCNN`` (layout + weights
  in one file; converted from detectron2 when the study trained with it);
- ``spnet_backbone.pth`` + ``spnet.json`` — the SPNet backbone alone, rebuilt with
  ``SPNet(**json.load(open("spnet.json")))`` and ``load_state_dict``;
- ``classes.json`` — the category names, for drawing predictions.

Stock detectron2 loads the config after ``import spnas`` (which registers the backbone)::

    cfg = get_cfg(); cfg.set_new_allowed(True); cfg.merge_from_file("export/config.yaml")
    cfg.MODEL.DEVICE = "cpu"                    # the config names none: detectron2's "cuda"
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
import functools
import json
import logging
from pathlib import Path

import torch

from spnas._io import atomic_write
from spnas.data.coco import DatasetSplits
from spnas.engines import DataSpec
from spnas.engines.torchvision import load_detector as load_torchvision_detector
from spnas.exceptions import ConfigError
from spnas.storage import make_artifact_store

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
    from spnas.search import SearchState, build_search_engine, fetch_weights, load_search_study

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
    data = DataSpec(splits, config.data.metric, config.data.lamr_category)
    engine = build_search_engine(config)
    exported = engine.export(spec, weights, config.final_schedule, data, out)
    skipped = exported.skipped
    _, backbone = find_backbone(exported.model)
    backbone_file = out / "spnet_backbone.pth"
    backbone_state = {k: v.cpu() for k, v in backbone.state_dict().items()}
    atomic_write(backbone_file, functools.partial(torch.save, backbone_state))
    spnet = json.dumps(
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
    atomic_write(out / "spnet.json", lambda tmp: tmp.write_text(spnet))
    classes = json.dumps(list(train.class_names))
    atomic_write(out / "classes.json", lambda tmp: tmp.write_text(classes))
    for reason in skipped:
        _logger.warning("not written: %s", reason)
    return ExportResult(
        directory=out,
        weights=weights,
        backbone=backbone_file,
        config=exported.config,
        torchvision=exported.torchvision,
        trial=best.number,
        arch=str(best.arch),
        parallel=None if best.parallel is None else str(best.parallel),
        value=best.value,
        skipped=tuple(skipped),
    )
