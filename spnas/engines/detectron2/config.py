"""detectron2 config keys for SPNet backbones: ``cfg.MODEL.SPNAS``.

Usage, as with any detectron2 project::

    from detectron2.config import get_cfg
    from spnas.engines.detectron2 import add_spnas_config

    cfg = get_cfg()
    add_spnas_config(cfg)
    cfg.merge_from_file("detectron_configs/faster_rcnn_spnet_fpn_fast.yaml")
    configure_levels(cfg)      # FPN/RPN/ROI levels and anchors follow the number of stages

Keys:

``MODEL.SPNAS.ARCH``
    serial code, e.g. ``"BNB(111,d111,d11111,d11)"``.
``MODEL.SPNAS.PARALLEL``
    extra subnets per stage, e.g. ``[0, 1, 2, 0]``; ``[]`` for a SerialNet.
``MODEL.SPNAS.BASE_WIDTH``, ``STEM``, ``NORM``, ``XB_GROUPS``
    as :class:`spnas.modeling.SerialNet`.
``MODEL.SPNAS.OUT_FEATURES``
    stage outputs the backbone returns; empty for all (what the FPN uses).
``MODEL.SPNAS.FREEZE_AT``
    freeze the stem (1) and stages before ``res{FREEZE_AT+1}``, like ``MODEL.BACKBONE.FREEZE_AT``.

``MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE``
    the box pooler's canonical box side in pixels, pooled from ``p4``, for
    ``MODEL.ROI_HEADS.NAME: "InputScaledROIHeads"`` (the shipped configs'); 0, the default,
    follows the input: ``224 × INPUT.MIN_SIZE_TEST / 800`` (detectron2's 224 px at 800 px),
    so that the 8–100 px boxes of 128 px images spread over ``p2`` … ``p5`` instead of all
    going to ``p2`` (:mod:`spnas.engines.detectron2.roi_heads`).
``SPNAS.DATA_DIR``
    a data set directory (train.json, val.json, images/) that ``spnas train`` registers as
    ``DATASETS.TRAIN`` / ``DATASETS.TEST`` (exported configs name no catalog entries, whose
    names only live in the process that registered them).
``TEST.LAMR.ENABLED``, ``TEST.LAMR.CATEGORY_ID``
    also report the log-average miss rate (EuroCity Persons), on one category id or, with
    ``-1``, averaged over categories.

``SOLVER.BASE_LR_END`` (the final LR of ``WarmupCosineLR``) is added too when the installed
detectron2 (0.6) does not have it; newer versions define it themselves.

Configs and weights are files people exchange, so nothing read from them may run code:
:func:`get_spnas_cfg` reads YAML with ``yaml.safe_load`` only (detectron2's
``merge_from_file`` falls back to ``yaml.unsafe_load``, which runs ``!!python/…`` tags), and
:func:`check_model_weights` refuses a ``MODEL.WEIGHTS`` that detectron2's checkpointer would
unpickle (``.pkl``) unless the user opts in.
"""

from __future__ import annotations

import sys
from pathlib import Path

from detectron2.config import CfgNode as CN

from spnas.arch import SerialCode
from spnas.engines.detectron2 import backbone as _backbone  # noqa: F401  (registers backbones)
from spnas.engines.detectron2 import roi_heads as _roi_heads  # noqa: F401  (registers ROI heads)
from spnas.exceptions import ConfigError


def config_path(name: str) -> Path:
    """The path of a shipped config in ``detectron_configs/`` (e.g. ``"Base-SPNet-FPN.yaml"``).

    Looks in the source checkout, then where ``pip install`` puts data files
    (``<prefix>/share/spnas/detectron_configs``).

    Raises:
        ConfigError: naming the file and the places searched.
    """
    places = [
        Path(__file__).resolve().parents[3] / "detectron_configs",
        Path(sys.prefix) / "share" / "spnas" / "detectron_configs",
    ]
    for place in places:
        if (place / name).is_file():
            return place / name
    raise ConfigError(
        f"detectron2 config {name!r} not found in {', '.join(str(p) for p in places)}"
    )


def add_spnas_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.SPNAS``, ``cfg.MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE``,
    ``cfg.TEST.LAMR`` (and ``SOLVER.BASE_LR_END`` if missing)."""
    cfg.MODEL.SPNAS = CN()
    cfg.MODEL.SPNAS.ARCH = "BNB(111,d111,d11111,d11)"
    cfg.MODEL.SPNAS.PARALLEL = []
    cfg.MODEL.SPNAS.BASE_WIDTH = 64
    cfg.MODEL.SPNAS.STEM = "resnet"
    cfg.MODEL.SPNAS.NORM = "FrozenBN"
    cfg.MODEL.SPNAS.XB_GROUPS = 32
    cfg.MODEL.SPNAS.OUT_FEATURES = []
    cfg.MODEL.SPNAS.FREEZE_AT = 0
    cfg.MODEL.ROI_BOX_HEAD.CANONICAL_BOX_SIZE = 0
    cfg.TEST.LAMR = CN({"ENABLED": False, "CATEGORY_ID": -1})
    cfg.SPNAS = CN({"DATA_DIR": ""})
    if "BASE_LR_END" not in cfg.SOLVER:
        cfg.SOLVER.BASE_LR_END = 0.0
    return cfg


def get_spnas_cfg(config_file: str | None = None) -> CN:
    """detectron2's defaults plus the SPNAS keys, merged with ``config_file`` if given."""
    from detectron2.config import get_cfg

    cfg = add_spnas_config(get_cfg())
    if config_file is not None:
        merge_config_file(cfg, config_file)
    return configure_levels(cfg)


def merge_config_file(cfg: CN, config_file: str | Path) -> CN:
    """``cfg.merge_from_file(config_file)`` with safe YAML only (its ``_BASE_`` files too).

    Raises:
        ConfigError: naming the file and line of a ``!!python/…`` tag (or any YAML error).
    """
    import yaml

    try:
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name!s}, line {mark.line + 1}" if mark else str(config_file)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"detectron2 config {where}: {problem} (configs are read with yaml.safe_load: "
            "python tags, which could run code, are refused)"
        ) from None
    return cfg


def check_model_weights(cfg: CN, *, allow_pickle: bool = False) -> None:
    """Refuse a ``MODEL.WEIGHTS`` whose loading could run code.

    detectron2's checkpointer reads ``.pkl`` files with :mod:`pickle`, which runs whatever the
    file says. Other local files are read here with ``torch.load(weights_only=True)`` first,
    so that one pickling anything but tensors fails with its name instead of reaching the
    checkpointer.

    Args:
        cfg: a detectron2 config.
        allow_pickle: the user's explicit opt-in (``--allow-pickle``) for a file they trust.

    Raises:
        WeightsError: naming ``MODEL.WEIGHTS``, the file, and the way out.
    """
    from spnas.exceptions import WeightsError
    from spnas.modeling.torchvision_weights import read_weights

    weights = str(cfg.MODEL.WEIGHTS)
    if not weights or allow_pickle:
        return
    if weights.endswith(".pkl"):
        raise WeightsError(
            f"MODEL.WEIGHTS {weights!r} is a pickle file, which detectron2 loads with pickle "
            "(it can run code): convert it to a .pth state dict, or pass --allow-pickle if you "
            "trust its source"
        )
    if "://" not in weights:
        read_weights(weights)


def configure_levels(cfg: CN) -> CN:
    """Point FPN, RPN, ROI heads and anchors at the stages ``MODEL.SPNAS.ARCH`` has.

    A searched network has 4–7 stages, so its FPN has as many levels plus the max-pool one;
    the anchor sizes of ``p2`` (the first entry of ``MODEL.ANCHOR_GENERATOR.SIZES``, one or
    more sizes) double per level, as in detectron2's R-FPN configs.
    """
    try:
        code = SerialCode.parse(cfg.MODEL.SPNAS.ARCH)
    except Exception as exc:
        raise ConfigError(f"MODEL.SPNAS.ARCH: {exc}") from exc
    stages = list(code.stage_names)
    levels = [f"p{int(name[3:])}" for name in stages]
    top = int(levels[-1][1:]) + 1
    base = [float(size) for size in cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]]
    cfg.MODEL.FPN.IN_FEATURES = stages
    cfg.MODEL.RPN.IN_FEATURES = [*levels, f"p{top}"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = levels
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [
        [size * 2**i for size in base] for i in range(len(levels) + 1)
    ]
    return cfg


def changed_keys(cfg: CN) -> CN:
    """The keys of ``cfg`` that detectron2's defaults (``get_cfg()``) lack or hold otherwise.

    A full dump names every key of the detectron2 it was written under, and each detectron2
    refuses the keys it does not know (``DATALOADER.REPEAT_SQRT``, written by upstream
    detectron2, is a ``KeyError`` for the 0.6 sources). The keys a config changes exist in
    both, so an exported config of changed keys loads under either.
    """
    from detectron2.config import get_cfg

    def changed(node: CN, defaults: CN | None) -> dict:
        out = {}
        for key, value in node.items():
            default = None if defaults is None else defaults.get(key)
            if isinstance(value, CN):
                sub = changed(value, default if isinstance(default, CN) else None)
                if sub or default is None:
                    out[key] = sub
            elif defaults is None or key not in defaults or default != value:
                out[key] = value
        return out

    return CN(changed(cfg, get_cfg()))
