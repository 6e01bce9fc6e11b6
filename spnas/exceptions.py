"""Exceptions raised by spnas.

Every error caused by user input derives from :class:`SpnasError`, and its message names the
input, the position or key at fault, and what was expected. The command line prints these
messages without a traceback.
"""

from __future__ import annotations


class SpnasError(Exception):
    """Base class of the errors spnas raises for bad input or a failed precondition."""


class ArchError(SpnasError, ValueError):
    """An architecture code is malformed, or lies outside the search space."""


class DataError(SpnasError, ValueError):
    """A dataset file or record is missing or malformed."""


class ConfigError(SpnasError, ValueError):
    """A study or engine configuration has an unknown key or a value of the wrong type."""


class WeightsError(SpnasError, ValueError):
    """A weights file is missing, truncated, or does not fit the network."""


class MissingDependencyError(SpnasError, ImportError):
    """An optional dependency a feature needs is not installed; the message names the
    ``spnas[extra]`` that installs it."""
