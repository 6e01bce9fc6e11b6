"""Random proposals: a few random ops applied to the current best code (docs/design.md §2).

This runs inside the Optuna sampler, so it uses :class:`random.Random` (no numpy) and is
deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from types import MappingProxyType

from spnas.arch import SearchSpace, SerialCode
from spnas.exceptions import ArchError, ConfigError
from spnas.morphism._ops import OP_KINDS, Op, apply, valid_ops

#: Default relative weights of the op kinds drawn by :func:`mutate`. Expand and swap are the
#: paper's two morphisms and get equal weight (Algorithm 1 applies one of each per step).
#: add_stage is our extension for the 5–6-stage networks of paper Table 7; it changes the
#: detector more (a new FPN level, new anchors), so it is drawn rarely: with 3 ops, about one
#: proposal in seven has one.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"expand": 1.0, "swap": 1.0, "add_stage": 0.1}
)


class NoCandidateError(ArchError):
    """No new child could be found: the neighbourhood of the code is exhausted.

    Every candidate drawn was outside the search space, equal to the parent, or among the
    codes to avoid (already evaluated or running).
    """


def mutate(
    code: SerialCode | str,
    space: SearchSpace,
    rng: random.Random | int | None,
    n_ops: int = 3,
    weights: Mapping[str, float] | None = None,
    avoid: Collection[SerialCode | str] = (),
    max_tries: int = 1000,
) -> tuple[SerialCode, tuple[Op, ...]]:
    """Apply ``n_ops`` random valid ops to ``code``, one after the other.

    Each op is drawn in two steps: its kind with probability proportional to ``weights``
    among the kinds that have a valid op on the current code (swap only where neither stage
    empties; add_stage and expand only below ``space.max_stages`` / ``space.max_blocks``),
    then one op of that kind uniformly. A child outside ``space``, equal to ``code`` or in
    ``avoid`` is rejected and a new sequence drawn, up to ``max_tries`` times.

    Args:
        code: the parent code (the current best).
        space: the search space the child must lie in.
        rng: a :class:`random.Random`, or an integer seed for a new one; ``None`` draws from
            a fresh, unseeded generator.
        n_ops: how many ops to apply (docs/design.md §2: ``serial.n_mutations``, default 3).
        weights: relative weight of each kind, e.g. ``{"expand": 1.0, "swap": 1.0,
            "add_stage": 0.25}``; kinds left out are never drawn. Defaults to
            :data:`DEFAULT_WEIGHTS`.
        avoid: codes (or their text) already evaluated or running.
        max_tries: how many op sequences to draw before giving up.

    Returns:
        The child and the ops that make it from ``code`` (``apply_all(code, ops) == child``;
        pass both to :func:`~spnas.morphism.trace` for the block mapping).

    Raises:
        NoCandidateError: when no acceptable child was found in ``max_tries`` tries.
        ConfigError: for bad ``n_ops``, ``weights`` or ``max_tries``.
        ArchError: for a malformed code in ``code`` or ``avoid``.
    """
    parent = SerialCode.parse(code)
    rng = _as_rng(rng)
    kind_weights = check_op_weights(weights)
    for name, value in (("n_ops", n_ops), ("max_tries", max_tries)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"mutate {name}={value!r}: expected an integer ≥ 1")
    avoided = _as_codes(avoid)

    hopeless = _hopeless(parent, space)
    if hopeless is not None:
        raise NoCandidateError(
            f"no child of {parent} can lie in the search space: {hopeless} "
            "(ops never remove blocks or stages)"
        )

    outside = same = seen = stuck = 0
    for _ in range(max_tries):
        child = parent
        ops: list[Op] = []
        for _ in range(n_ops):
            op = _draw(child, space, kind_weights, rng)
            if op is None:
                break
            child = apply(child, op)
            ops.append(op)
        if len(ops) < n_ops:
            stuck += 1
        elif not space.contains(child):
            outside += 1
        elif child == parent:
            same += 1
        elif child in avoided:
            seen += 1
        else:
            return child, tuple(ops)

    reasons = [
        f"{n} {what}"
        for n, what in (
            (seen, "already evaluated or running"),
            (same, "equal to the parent"),
            (outside, "outside the search space"),
            (stuck, "found no valid op of a weighted kind"),
        )
        if n
    ]
    raise NoCandidateError(
        f"no new child of {parent} in {max_tries} tries of {n_ops} op(s): the neighbourhood "
        f"is exhausted ({', '.join(reasons)}; {len(avoided)} code(s) to avoid)"
    )


def _draw(
    code: SerialCode, space: SearchSpace, weights: Mapping[str, float], rng: random.Random
) -> Op | None:
    by_kind: dict[str, list[Op]] = {kind: [] for kind in OP_KINDS}
    for op in valid_ops(code, space):
        by_kind[op.kind].append(op)
    # Draw among the kinds present only, so a kind that cannot apply (add_stage at
    # max_stages) does not make the others likelier by accident of rejection.
    kinds = [kind for kind in OP_KINDS if by_kind[kind] and weights.get(kind, 0.0) > 0]
    if not kinds:
        return None
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    return rng.choice(by_kind[kind])


def _hopeless(parent: SerialCode, space: SearchSpace) -> str | None:
    if parent.block not in space.block_types:
        return f"block type {parent.block} is not among {', '.join(space.block_types)}"
    if parent.num_blocks > space.max_blocks:
        return f"{parent.num_blocks} blocks > max_blocks={space.max_blocks}"
    if parent.num_stages > space.max_stages:
        return f"{parent.num_stages} stages > max_stages={space.max_stages}"
    return None


def _as_rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None:
        return random.Random()
    if isinstance(rng, int) and not isinstance(rng, bool):
        return random.Random(rng)
    raise ConfigError(f"mutate rng={rng!r}: expected a random.Random, an integer seed or None")


def check_op_weights(weights: Mapping[str, float] | None) -> Mapping[str, float]:
    """The mutation weights per op kind (:data:`DEFAULT_WEIGHTS` for ``None``), checked.

    Raises:
        ConfigError: an unknown op kind, a weight that is not a finite number ≥ 0, or no
            positive weight.
    """
    if weights is None:
        return DEFAULT_WEIGHTS
    checked: dict[str, float] = {}
    for kind, value in weights.items():
        if kind not in OP_KINDS:
            raise ConfigError(
                f"unknown op kind {kind!r} in mutation weights, "
                f"expected some of {', '.join(OP_KINDS)}"
            )
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"mutation weight {kind}={value!r}: expected a finite number ≥ 0")
        checked[kind] = float(value)
    if not any(checked.values()):
        raise ConfigError(
            f"mutation weights {dict(weights)!r}: expected at least one positive weight"
        )
    return checked


def _as_codes(avoid: Collection[SerialCode | str]) -> frozenset[SerialCode]:
    # A lone code is a collection too (a str of characters); take it as one code.
    if isinstance(avoid, str | SerialCode):
        avoid = (avoid,)
    if isinstance(avoid, frozenset) and all(type(c) is SerialCode for c in avoid):
        return avoid  # the search's own (SearchState.taken_serial): thousands, parsed already
    return frozenset(SerialCode.parse(c) for c in avoid)
