"""JSON for ``--json`` outputs: valid JSON always, with non-finite numbers as ``null``.

Python's :func:`json.dumps` writes ``NaN`` and ``Infinity``, which are not JSON: ``jq``,
JavaScript and most parsers refuse them. A diverged training reports a NaN loss or AP, so every
command's ``--json`` goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`finite` ``(value)``; refuses what is still not JSON."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
