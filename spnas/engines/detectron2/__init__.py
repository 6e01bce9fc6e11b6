"""The detectron2 engine: SPNet backbones in detectron2's registries, config and trainer.

Importing this package applies :mod:`spnas.engines.detectron2.compat` (so that detectron2
0.6 installed without its compiled ops imports) and nothing heavier: :mod:`spnas` imports it
on every start. The API below loads on first use; :func:`add_spnas_config` registers
``build_spnet_backbone`` and ``build_spnet_fpn_backbone`` in ``BACKBONE_REGISTRY`` and
:class:`InputScaledROIHeads` (the shipped configs' ROI heads) in ``ROI_HEADS_REGISTRY``.

Public API: :func:`add_spnas_config`, :func:`configure_levels`, :func:`get_spnas_cfg`,
:func:`merge_config_file`, :func:`check_model_weights`, :func:`config_path`,
:class:`SPNetBackbone`, :class:`InputScaledROIHeads`, :class:`SPNASTrainer`,
:class:`Detectron2Engine`.
"""

from __future__ import annotations

from spnas._lazy import lazy_getattr
from spnas.engines.detectron2 import compat

compat.apply()

_API = {
    "SPNetBackbone": "backbone",
    "build_spnet_backbone": "backbone",
    "build_spnet_fpn_backbone": "backbone",
    "InputScaledROIHeads": "roi_heads",
    "add_spnas_config": "config",
    "check_model_weights": "config",
    "config_path": "config",
    "configure_levels": "config",
    "get_spnas_cfg": "config",
    "merge_config_file": "config",
    "Detectron2Engine": "engine",
    "SPNASTrainer": "trainer",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
