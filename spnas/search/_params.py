"""The architecture of a trial as Optuna params, for Optuna's own analysis tools.

The sampler decides the architecture, so no ``trial.suggest_*`` call ever names it, and
``plot_param_importances``, ``plot_slice``, ``trials_dataframe()`` and the dashboard's
importance panel would see nothing. :func:`record_architecture` writes its numeric
descriptors as params:

============== ============================================================
``blocks``      blocks in the network
``stages``      stages (outputs ``res2`` …)
``blocks_sI``   blocks in stage ``I`` (1-based; 0 when the network has fewer stages)
``doublings``   ``d`` blocks
``subnets_sI``  extra parallel subnets of stage ``I`` (0 for a SerialNet)
``subnets``     extra parallel subnets in all
``gmacs``       backbone GMACs at ``schedule.min_size``² (:func:`spnas.arch.code_cost`)
============== ============================================================

Every name has one distribution per study, fixed by the search space, whatever the
architecture: Optuna's analysis uses only params whose distribution is the same in every
trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from spnas.arch import SerialCode
from spnas.search._optuna import trial_id
from spnas.search._proposals import config_cost
from spnas.search._state import Decision
from spnas.storage import update_trial


def architecture_distributions(config: Any) -> dict[str, BaseDistribution]:
    """The params :func:`record_architecture` writes, with their fixed distributions."""
    key = (config.space, config.seed_arch, config.model, config.schedule.min_size)
    if key not in _DISTRIBUTIONS:
        _DISTRIBUTIONS[key] = _distributions(config)
    return dict(_DISTRIBUTIONS[key])


_DISTRIBUTIONS: dict[tuple[Any, ...], dict[str, BaseDistribution]] = {}


def _distributions(config: Any) -> dict[str, BaseDistribution]:
    space = config.space
    doublings = max(config.seed_arch.num_doublings, space.max_doublings or 0)
    out: dict[str, BaseDistribution] = {
        "blocks": IntDistribution(space.min_blocks, space.max_blocks),
        "stages": IntDistribution(space.min_stages, space.max_stages),
    }
    for i in range(1, space.max_stages + 1):
        out[f"blocks_s{i}"] = IntDistribution(0, space.max_blocks)
    out["doublings"] = IntDistribution(0, doublings)
    for i in range(1, space.max_stages + 1):
        out[f"subnets_s{i}"] = IntDistribution(0, space.max_subnets)
    out["subnets"] = IntDistribution(0, space.max_stages * space.max_subnets)
    out["gmacs"] = FloatDistribution(0.0, _gmacs_bound(config, doublings))
    return out


def _gmacs_bound(config: Any, doublings: int) -> float:
    """More GMACs than any network of the space costs, rounded up to 1, 2 or 5 × 10^k.

    Morphisms never add a ``d``, so no block is wider than the widest plain block at the finest
    resolution (stride 4); a ``d`` block costs less than two of those, a fusion less than one,
    and a stage runs at most ``1 + max_subnets`` times.
    """
    space = config.space
    block = config.seed_arch.block
    one, two = (
        config_cost(config, SerialCode.parse(f"{block}({'d' * doublings}{'1' * n})"))
        for n in (1, 2)
    )
    widest = two.gmacs - one.gmacs
    stem = one.gmacs - one.stage_gmacs[0]
    repeats = (2 * space.max_blocks + space.max_stages) * (1 + space.max_subnets)
    bound = stem + repeats * widest
    step = 10 ** math.floor(math.log10(bound))
    return float(next(m * step for m in (1, 2, 5, 10) if m * step >= bound))


def architecture_values(config: Any, decision: Decision) -> dict[str, int | float]:
    """The params of ``decision``'s network (empty when it names none)."""
    arch = decision.arch
    if arch is None:
        return {}
    per_stage = arch.blocks_per_stage
    subnets = tuple(decision.parallel.subnets) if decision.parallel is not None else ()
    stages = config.space.max_stages
    values: dict[str, int | float] = {"blocks": arch.num_blocks, "stages": arch.num_stages}
    values.update(
        {f"blocks_s{i + 1}": per_stage[i] if i < len(per_stage) else 0 for i in range(stages)}
    )
    values["doublings"] = arch.num_doublings
    values.update(
        {f"subnets_s{i + 1}": subnets[i] if i < len(subnets) else 0 for i in range(stages)}
    )
    values["subnets"] = sum(subnets)
    values["gmacs"] = config_cost(config, arch, decision.parallel).gmacs
    return values


def record_architecture(
    storage: Any,
    trial: FrozenTrial,
    config: Any,
    decision: Decision,
    system_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write ``decision``'s architecture as params of ``trial`` (see the module docstring),
    with ``system_attrs`` (the decision itself, when it is still to write): on an RDB storage
    in one transaction, so other workers see the decision and its params at once
    (:func:`~spnas.storage.update_trial`).

    Also updates ``trial`` itself (the object an objective's ``optuna.Trial`` reads
    ``params`` from). Params the trial already has (a retry copies its original's) are kept.
    """
    distributions = architecture_distributions(config)
    values = {
        name: value
        for name, value in architecture_values(config, decision).items()
        if name not in trial.params
    }
    update_trial(
        storage,
        trial_id(trial),
        system_attrs=system_attrs,
        params=values,
        distributions=distributions,
    )
    for name, value in values.items():
        trial.params[name] = value
        trial.distributions[name] = distributions[name]
