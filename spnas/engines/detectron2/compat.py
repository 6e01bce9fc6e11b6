"""What ``import spnas`` does to the process: every side effect of importing spnas is here.

:func:`apply` runs when :mod:`spnas` (or :mod:`spnas.engines.detectron2`) is imported. When
detectron2 is not installed it does nothing. Otherwise it does three things, each only when
needed, each idempotent, none importing torch or detectron2 (so ``import spnas`` stays cheap):

1. **A placeholder ``detectron2._C``** in ``sys.modules``, when detectron2 lacks its compiled
   ops. detectron2 has no wheels, and the one PyPI distribution of its sources,
   ``pb1-detectron2==0.6`` (installed by ``tools/install_detectron2.sh``), lacks the C++/CUDA
   files of ``detectron2._C``; ``detectron2.layers`` (and so ``detectron2.modeling``) and
   ``detectron2.evaluation`` run ``from detectron2 import _C`` at import time. Only a few
   features call into it: deformable convolution, rotated boxes and the fast COCO evaluation.
   The ops detection needs, NMS and ROIAlign, come from torchvision. The placeholder's ops
   raise :class:`MissingCompiledOpError`, naming the feature, when they are actually called.
   When the real compiled ops are present (an upstream build), no placeholder is installed;
   :func:`has_compiled_ops` tells the two apart.
2. **``PIL.Image.LINEAR``**, an alias of ``PIL.Image.BILINEAR``, when Pillow lacks it:
   ``detectron2.data.transforms`` uses it as a default argument, and Pillow 10 removed it.
3. **An import hook** (a :data:`sys.meta_path` finder, :class:`_RegisterAfterImport`) that
   imports :mod:`spnas.engines.detectron2.backbone` and :mod:`~spnas.engines.detectron2.roi_heads`
   right after detectron2 imports ``detectron2.modeling``, so that ``BACKBONE_REGISTRY`` has
   ``build_spnet_backbone`` and ``build_spnet_fpn_backbone`` and ``ROI_HEADS_REGISTRY`` has
   ``InputScaledROIHeads``. That is what lets stock detectron2 code build an exported
   config after a bare ``import spnas``, as the README shows::

       import spnas
       from detectron2.config import get_cfg
       from detectron2.engine import DefaultPredictor
       cfg = get_cfg(); cfg.set_new_allowed(True); cfg.merge_from_file("export/config.yaml")
       predictor = DefaultPredictor(cfg)

   The hook removes itself once it has run; when ``detectron2.modeling`` is already imported,
   the backbones are registered at once instead.

Nothing else in spnas changes global state at import time.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

from spnas.exceptions import SpnasError

__all__ = ["MissingCompiledOpError", "apply", "has_compiled_ops"]

_C_NAME = "detectron2._C"
# Set in the placeholder's namespace, so that apply() can tell it from the real extension.
_PLACEHOLDER_MARK = "_spnas_placeholder"

# The names of detectron2._C that detectron2 0.6 calls, by prefix, and the feature a user would
# recognize in a config. (nms_rotated goes through torch.ops.detectron2 instead, whose absence
# torch reports itself.)
_FEATURES: tuple[tuple[str, str], ...] = (
    ("deform_conv_", "deformable convolution (DeformConv, MODEL.RESNETS.DEFORM_ON_PER_STAGE)"),
    ("modulated_deform_conv_", "modulated deformable convolution (ModulatedDeformConv)"),
    ("box_iou_rotated", "rotated boxes (pairwise_iou_rotated, RotatedBoxes)"),
    ("roi_align_rotated_", "rotated boxes (ROIAlignRotated)"),
    ("COCOeval", "fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))"),
    ("InstanceAnnotation", "fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))"),
    ("ImageEvaluation", "fast COCO evaluation (use COCOEvaluator(..., use_fast_impl=False))"),
)
_NOT_BUILT = "not built: detectron2 was installed without its compiled ops"


class MissingCompiledOpError(SpnasError, ImportError):
    """A feature needs a compiled op of detectron2 that this installation lacks."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.feature = _feature_of(op)
        super().__init__(
            f"{self.feature} needs the compiled op detectron2._C.{op}, but detectron2 was "
            "installed without its compiled ops (e.g. from the pb1-detectron2 sources by "
            "tools/install_detectron2.sh). Either avoid that feature, or build upstream "
            "detectron2 with its C++/CUDA ops (see "
            "https://detectron2.readthedocs.io/en/latest/tutorials/install.html, e.g. "
            "`pip install --no-build-isolation "
            "'git+https://github.com/facebookresearch/detectron2.git'`) in this environment.",
            name=_C_NAME,
        )


def _feature_of(op: str) -> str:
    for prefix, feature in _FEATURES:
        if op.startswith(prefix):
            return feature
    return f"detectron2._C.{op}"


class _MissingOpsModule(types.ModuleType):
    """Stands in for ``detectron2._C``: importable, but every op raises on access."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            # Protocol probes (copy, pickle, inspect, pytest) must see a plain module.
            raise AttributeError(f"module {_C_NAME!r} has no attribute {name!r}")
        raise MissingCompiledOpError(name)


def _not_built() -> str:
    return _NOT_BUILT


def _has_cuda() -> bool:
    return False


def _new_placeholder() -> types.ModuleType:
    module = _MissingOpsModule(_C_NAME, f"Placeholder for detectron2's compiled ops: {_NOT_BUILT}.")
    module.__spec__ = importlib.machinery.ModuleSpec(_C_NAME, None, origin="spnas placeholder")
    # detectron2.utils.collect_env (run by engine.default_setup) reports these when
    # `import detectron2._C` succeeds; it reads __file__ only when has_cuda() is true.
    module.get_compiler_version = _not_built  # type: ignore[attr-defined]
    module.get_cuda_version = _not_built  # type: ignore[attr-defined]
    module.has_cuda = _has_cuda  # type: ignore[attr-defined]
    setattr(module, _PLACEHOLDER_MARK, True)
    return module


def _is_placeholder(module: types.ModuleType) -> bool:
    # vars(), not getattr(): the placeholder's __getattr__ raises for unknown names.
    return bool(vars(module).get(_PLACEHOLDER_MARK, False))


def _detectron2_spec() -> importlib.machinery.ModuleSpec | None:
    # For a top-level name, find_spec only searches: it imports nothing (no torch).
    return importlib.util.find_spec("detectron2")


def has_compiled_ops() -> bool:
    """Whether detectron2 is installed with its compiled ops (``detectron2._C``).

    Unlike ``importlib.util.find_spec("detectron2._C")``, this neither imports detectron2 (and
    torch) nor mistakes the placeholder installed by :func:`apply` for the real extension.
    """
    module = sys.modules.get(_C_NAME)
    if module is not None:
        return not _is_placeholder(module)
    spec = _detectron2_spec()
    if spec is None or not spec.submodule_search_locations:
        return False
    locations = list(spec.submodule_search_locations)
    return importlib.machinery.PathFinder.find_spec(_C_NAME, locations) is not None


def _install_ops_placeholder() -> None:
    module = sys.modules.get(_C_NAME)
    if module is not None or has_compiled_ops():
        return
    placeholder = _new_placeholder()
    sys.modules[_C_NAME] = placeholder
    parent = sys.modules.get("detectron2")
    if parent is not None:
        # `from detectron2 import _C` reads the attribute first when detectron2 was imported
        # before apply().
        parent._C = placeholder  # type: ignore[attr-defined]


def _alias_pil_linear() -> None:
    if "PIL" not in sys.modules and importlib.util.find_spec("PIL") is None:
        return
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]


def apply() -> None:
    """Prepare detectron2 0.6 installed without its compiled ops for import. Idempotent.

    Call it before detectron2's modules are imported; ``import spnas`` does. It does nothing
    when detectron2 is not installed, installs the ``detectron2._C`` placeholder only when the
    compiled ops are absent, and aliases ``PIL.Image.LINEAR`` only when Pillow lacks it.
    """
    if _detectron2_spec() is None:
        return
    _install_ops_placeholder()
    _alias_pil_linear()
    _register_backbones_with_detectron2_modeling()


#: The modules that register spnas's parts in detectron2's registries.
_REGISTERING_MODULES = ("spnas.engines.detectron2.backbone", "spnas.engines.detectron2.roi_heads")


def _import_registering_modules() -> None:
    for name in _REGISTERING_MODULES:
        importlib.import_module(name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers SPNet backbones and ROI heads right after ``detectron2.modeling`` is imported.

    ``import spnas`` must stay cheap (no torch), yet a config exported by spnas must build with
    stock detectron2 code: ``build_model(cfg)`` looks ``build_spnet_fpn_backbone`` up in
    ``BACKBONE_REGISTRY``. So registration waits for detectron2's own import of its
    ``modeling`` package.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "detectron2.modeling":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            original(module)
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            _import_registering_modules()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _register_backbones_with_detectron2_modeling() -> None:
    if "detectron2.modeling" in sys.modules:
        if "detectron2.modeling.backbone" in sys.modules:
            _import_registering_modules()
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
