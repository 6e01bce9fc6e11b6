"""Training and evaluation engines: each trains, evaluates and exports one architecture.

The contract is :class:`Engine` (:mod:`spnas.engines.base`); the values it takes and returns
are :class:`ModelSpec`, :class:`Schedule`, :class:`DataSpec`, :class:`InitWeights`,
:class:`TrialResult` and :class:`ExportedDetector`. Engines are built by name from their
config section with :func:`build_engine`: ``detectron2`` (:mod:`spnas.engines.detectron2`, the
primary engine) and ``torchvision`` (:mod:`spnas.engines.torchvision`, for machines without
detectron2).

Importing this package stays cheap: the names below load on first use (they import torch),
and each engine imports its framework only when it is built.

Adding an engine touches its own package and one line: write ``spnas/engines/<name>/`` with a
subclass of :class:`Engine` decorated with ``@register_engine("<name>")`` (override
:meth:`Engine.from_config` when its config section's keys are not its constructor's), and add
``"<name>": "spnas.engines.<name>.engine"`` to ``_BUILTIN_ENGINES`` in
:mod:`spnas.engines._registry`. Studies then accept ``engine: {name: <name>, …}`` and
``spnas train-eval --engine <name>``. Decorating its ``train_eval`` with
:func:`data_parallel` (and training a ``DistributedDataParallel`` when a process group exists)
gives it ``schedule.gpus_per_trial``, as both built-in engines do
(:mod:`spnas.engines.distributed`).
"""

from __future__ import annotations

from spnas._lazy import lazy_getattr

_API = {
    "ENGINE_REGISTRY": "_registry",
    "build_engine": "_registry",
    "engine_names": "_registry",
    "register_engine": "_registry",
    "Engine": "base",
    "save_state_dict": "base",
    "METRIC_DIRECTIONS": "_types",
    "DataSpec": "_types",
    "ExportedDetector": "_types",
    "InitWeights": "_types",
    "ModelSpec": "_types",
    "NullReporter": "_types",
    "Reporter": "_types",
    "Schedule": "_types",
    "TrialDiverged": "_types",
    "TrialResult": "_types",
    "DistributedError": "distributed",
    "data_parallel": "distributed",
    "launch": "distributed",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
