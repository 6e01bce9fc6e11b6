"""spnas: SP-NAS serial-to-parallel detection backbone search on Optuna and Detectron2.

The package root exports the architecture codes, the search space and the exceptions only;
each subpackage exports its own public API from its ``__init__`` (:mod:`spnas.search` the
sampler, configuration and search state, :mod:`spnas.modeling` the networks,
:mod:`spnas.engines` the engines and their value types, :mod:`spnas.data` the data sets,
:mod:`spnas.export` the exported detectors). Importing :mod:`spnas` is cheap: it does not
import torch or detectron2.

Side effects: when detectron2 is installed, importing :mod:`spnas` prepares it, through
:func:`spnas.engines.detectron2.compat.apply` — a placeholder ``detectron2._C`` when its
compiled ops are missing, the ``PIL.Image.LINEAR`` alias Pillow 10 removed, and an import hook
that registers the SPNet backbones in detectron2's ``BACKBONE_REGISTRY`` when
``detectron2.modeling`` is imported (so that ``import spnas`` lets stock detectron2 build an
exported config). :mod:`spnas.engines.detectron2.compat` documents each, with its reason.
"""

from __future__ import annotations

from spnas.arch import ParallelCode, SearchSpace, SerialCode
from spnas.engines.detectron2 import compat as _detectron2_compat
from spnas.exceptions import ArchError, ConfigError, DataError, SpnasError, WeightsError

# Before any detectron2 module is imported: a detectron2 installed without its compiled ops
# needs a placeholder for them (a cheap no-op otherwise; see spnas.engines.detectron2.compat).
_detectron2_compat.apply()

__version__ = "0.1.0"

__all__ = [
    "ArchError",
    "ConfigError",
    "DataError",
    "ParallelCode",
    "SearchSpace",
    "SerialCode",
    "SpnasError",
    "WeightsError",
    "__version__",
]
