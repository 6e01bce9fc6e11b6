"""The detectron2 engine.

Importing this package applies :mod:`spnas.engines.detectron2.compat`, which lets detectron2
0.6 installed without its compiled ops be imported; it imports neither detectron2 nor torch.
"""

from __future__ import annotations

from spnas.engines.detectron2 import compat

compat.apply()
