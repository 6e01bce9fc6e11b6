"""Training and evaluation engines: each trains and evaluates one sampled architecture.

:mod:`spnas.engines.detectron2` is the primary engine. Engines import their frameworks lazily,
so importing this package stays cheap.
"""

from __future__ import annotations
