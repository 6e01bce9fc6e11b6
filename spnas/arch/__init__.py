"""Architecture codes and the search space (paper §3.1, docs/design.md §1).

This package does not import torch: codes can be parsed, compared and validated anywhere,
including in the Optuna sampler's decision path.

Example::

    >>> from spnas.arch import SerialCode
    >>> code = SerialCode.parse("BNB(111,d111,d11111,d11)")   # ResNet-50
    >>> code.blocks_per_stage, code.stage_channels(64)
    ((3, 4, 6, 3), (256, 512, 1024, 2048))
"""

from __future__ import annotations

from spnas.arch._cost import CodeCost, code_cost
from spnas.arch._parallel import ParallelCode
from spnas.arch._scanner import Scanner
from spnas.arch._serial import BLOCK_TYPES, EXPANSION, BlockSpec, SerialCode
from spnas.arch._space import SearchSpace
from spnas.exceptions import ArchError

#: Well-known networks in the paper's format. Note: the paper's §3.1 text (see docs/design.md §1)
#: it) writes ResNet-50 as ``BNB(111,d111,d1111,d11)``, which has 3-4-5-3 blocks; ResNet-50 has
#: 3-4-6-3, as the paper's Table 7 writes it and as the torchvision equivalence tests check.
RESNET18 = SerialCode.parse("BB(11,d1,d1,d1)")
RESNET34 = SerialCode.parse("BB(111,d111,d11111,d11)")
RESNET50 = SerialCode.parse("BNB(111,d111,d11111,d11)")
RESNET101 = SerialCode.parse("BNB(111,d111,d1111111111111111111111,d11)")
RESNEXT50 = SerialCode.parse("XB(111,d111,d11111,d11)")
RESNEXT101 = SerialCode.parse("XB(111,d111,d1111111111111111111111,d11)")

__all__ = [
    "BLOCK_TYPES",
    "EXPANSION",
    "RESNET18",
    "RESNET34",
    "RESNET50",
    "RESNET101",
    "RESNEXT50",
    "RESNEXT101",
    "ArchError",
    "BlockSpec",
    "CodeCost",
    "ParallelCode",
    "Scanner",
    "SearchSpace",
    "SerialCode",
    "code_cost",
]
