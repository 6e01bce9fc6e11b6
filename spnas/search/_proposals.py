"""Candidate proposals: serial morphisms and FLOPs-inverse parallel sampling (paper §3)."""

from __future__ import annotations

import random

from spnas.arch import CodeCost, ParallelCode, SerialCode, code_cost
from spnas.exceptions import ArchError
from spnas.morphism import NoCandidateError, format_ops, mutate
from spnas.search._state import Decision, SearchState, TrialKind


class SearchExhausted(NoCandidateError):
    """No new candidate exists near the current best: the round or phase ends."""


def propose_serial(state: SearchState, rng: random.Random) -> Decision:
    """``n_mutations`` random morphisms of the round's best network (paper Algorithm 1).

    The child starts from ``state.init_from``'s weights: with equal training the round's
    baseline, its morphisms composed from the baseline's architecture.

    Children outside the space, equal to the parent, or already evaluated or running are
    rejected.

    Raises:
        SearchExhausted: when no such child can be found.
    """
    config = state.config
    parent = state.parent
    if parent is None or state.next_kind != TrialKind.SERIAL:
        raise ArchError(f"no serial proposal in phase {state.phase!r} (next: {state.next_kind})")
    avoid = state.taken_serial()
    try:
        child, ops = mutate(
            parent.arch,
            config.space,
            rng,
            n_ops=config.serial.n_mutations,
            weights=config.serial.op_weights,
            avoid=avoid,
        )
    except NoCandidateError as exc:
        raise SearchExhausted(str(exc)) from exc
    start, prefix = _weights_source(state)
    return Decision(
        kind=TrialKind.SERIAL,
        arch=child,
        parent=start,
        ops=(*prefix, *format_ops(ops).split("; ")),
        round=state.round,
    )


def _weights_source(state: SearchState) -> tuple[int, tuple[str, ...]]:
    """The trial a candidate starts from, and the morphisms from its architecture to the
    proposal's parent: the round's baseline and the parent's own morphisms with equal
    training, the parent itself (no morphism) with the greedy rule."""
    parent = state.parent
    assert parent is not None
    source = state.init_from or parent
    if source.number == parent.number or parent.arch == source.arch:
        return source.number, ()
    return source.number, parent.ops


def config_cost(config, arch: SerialCode, parallel: ParallelCode | None = None) -> CodeCost:
    """Cost of ``arch`` (and ``parallel``) with the study's model settings at its input size.

    Counted from the code (:func:`spnas.arch.code_cost`): tracing each candidate with fvcore
    took seconds per parallel decision, while a serial decision took milliseconds.
    """
    size = (config.schedule.min_size, config.schedule.min_size)
    m = config.model
    return code_cost(
        arch, parallel, base_width=m.width, stem=m.stem, input_size=size, xb_groups=m.xb_groups
    )


def stage_costs(config, arch: SerialCode) -> tuple[float, ...]:
    """GMACs of each stage of the SerialNet ``arch`` at the trial's input size."""
    return config_cost(config, arch).stage_gmacs


def flops_budget(config, arch: SerialCode) -> float:
    """The GMACs an SPNet of ``arch`` may cost: absolute, or a ratio of the SerialNet's."""
    if config.parallel.budget_gmacs is not None:
        return config.parallel.budget_gmacs
    ratio = config.parallel.budget_ratio if config.parallel.budget_ratio is not None else 2.0
    return config_cost(config, arch).gmacs * ratio


def sample_parallel_code(
    arch: SerialCode, costs: tuple[float, ...], max_subnets: int, rng: random.Random
) -> ParallelCode:
    """Add subnets one at a time, at stage ``l`` with probability ∝ 1/FLOPs(s_l).

    The number of additions is uniform in ``1 .. stages · max_subnets``; stages that reached
    ``max_subnets`` are no longer drawn. Cheap stages get subnets more often, which is the
    paper's resource-constraint sampling.
    """
    code = ParallelCode.zeros(arch.num_stages)
    additions = rng.randint(1, arch.num_stages * max_subnets)
    for _ in range(additions):
        open_stages = [i for i in range(arch.num_stages) if code[i] < max_subnets]
        if not open_stages:
            break
        weights = [1.0 / max(costs[i], 1e-12) for i in open_stages]
        code = code.add(rng.choices(open_stages, weights=weights)[0])
    return code


def propose_parallel(state: SearchState, rng: random.Random) -> Decision:
    """A parallel code for the best serial network, initialised from the best SPNet.

    Candidates over the FLOPs budget or already evaluated or running are rejected.

    Raises:
        SearchExhausted: when ``parallel.max_tries`` draws found nothing new.
    """
    config = state.config
    parent = state.parent
    if parent is None or state.next_kind != TrialKind.PARALLEL:
        raise ArchError(f"no parallel proposal in phase {state.phase!r} (next: {state.next_kind})")
    arch = parent.arch
    costs = stage_costs(config, arch)
    budget = flops_budget(config, arch)
    taken = {parallel for a, parallel in state.taken() if a == str(arch) and parallel}
    over_budget = 0
    for _ in range(config.parallel.max_tries):
        code = sample_parallel_code(arch, costs, config.space.max_subnets, rng)
        if str(code) in taken:
            continue
        if config_cost(config, arch, code).gmacs > budget:
            over_budget += 1
            continue
        return Decision(
            kind=TrialKind.PARALLEL,
            arch=arch,
            parallel=code,
            parent=_weights_source(state)[0],
            round=state.round,
        )
    raise SearchExhausted(
        f"no new parallel code for {arch} within {budget:.3f} GMACs after "
        f"{config.parallel.max_tries} draws ({over_budget} over budget, the rest evaluated)"
    )
