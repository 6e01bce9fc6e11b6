"""Packages whose public names load on first use (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, api: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<api[name]>`` when
    ``name`` is first asked for, so that importing the package imports none of them.

    Usage, in a package's ``__init__``::

        _API = {"TorchvisionEngine": "engine", ...}
        __all__ = sorted(_API)
        __getattr__ = lazy_getattr(__name__, _API)
    """

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
