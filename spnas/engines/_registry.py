"""The engines by name: the one place that knows which engines exist.

An engine registers its class with :func:`register_engine`; :func:`build_engine` builds it
from the options of a study's ``engine`` section (or ``spnas train-eval``'s flags) through
:meth:`Engine.from_config <spnas.engines.Engine.from_config>`. Adding an engine means writing
its package and adding one line to :data:`_BUILTIN_ENGINES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from spnas.exceptions import ConfigError

if TYPE_CHECKING:
    from spnas.engines.base import Engine

__all__ = ["ENGINE_REGISTRY", "build_engine", "engine_names", "register_engine"]

_E = TypeVar("_E", bound="type[Engine]")

#: Engine classes by name, filled by :func:`register_engine` as their modules are imported.
ENGINE_REGISTRY: dict[str, type[Engine]] = {}

#: The module that registers each built-in engine; imported on first use so that choosing one
#: engine never imports the other's dependencies.
_BUILTIN_ENGINES = {
    "detectron2": "spnas.engines.detectron2.engine",
    "torchvision": "spnas.engines.torchvision.engine",
}


def register_engine(name: str) -> Callable[[_E], _E]:
    """Class decorator: register an :class:`~spnas.engines.Engine` subclass as ``name``."""

    def decorator(cls: _E) -> _E:
        ENGINE_REGISTRY[name] = cls
        return cls

    return decorator


def engine_names() -> tuple[str, ...]:
    """The names :func:`build_engine` accepts, sorted; imports no engine."""
    return tuple(sorted(set(ENGINE_REGISTRY) | set(_BUILTIN_ENGINES)))


def build_engine(name: str, **options: Any) -> Engine:
    """The engine registered as ``name``, built from ``options`` (its config section's keys).

    Raises:
        ConfigError: for an unknown name or option, or an engine whose dependencies are
            missing.
    """
    if name not in ENGINE_REGISTRY and name in _BUILTIN_ENGINES:
        try:
            importlib.import_module(_BUILTIN_ENGINES[name])
        except ImportError as exc:
            raise ConfigError(
                f"engine {name!r} cannot be used: {exc}. Install its dependencies "
                "(`make setup` installs detectron2) or choose engine 'torchvision'"
            ) from exc
    if name not in ENGINE_REGISTRY:
        raise ConfigError(f"unknown engine {name!r}, expected one of {', '.join(engine_names())}")
    return ENGINE_REGISTRY[name].from_config(options)
