"""Optional dependencies: imported where a feature needs them, with an error naming the extra.

``pip install spnas`` installs what every command needs; PostgreSQL storage, the gRPC storage
proxy, S3 artifacts, the dashboard and the PNG report are extras (setup.py's
``extras_require``), so that spnas installs beside other projects without their packages.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from spnas.exceptions import MissingDependencyError, SpnasError


def require(
    module: str,
    *,
    package: str,
    extra: str,
    purpose: str,
    error: type[SpnasError] = MissingDependencyError,
) -> ModuleType:
    """Import ``module`` for ``purpose``, or say which extra installs it.

    Args:
        module: the module to import, e.g. ``"psycopg2"``.
        package: its distribution on PyPI, e.g. ``"psycopg2-binary"``.
        extra: the ``spnas[extra]`` that installs it, e.g. ``"postgres"``.
        purpose: what needs it, e.g. ``"a PostgreSQL storage"``.
        error: the exception class to raise (a caller's own, e.g. ``StorageError``).

    Raises:
        MissingDependencyError (or ``error``): ``"<purpose> needs <package>, which cannot be
        imported (…): pip install 'spnas[<extra>]'"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(
            f"{purpose} needs {package}, which cannot be imported ({exc}): pip install "
            f"'spnas[{extra}]' (or pip install {package})"
        ) from exc
