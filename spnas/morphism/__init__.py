"""Serial-level network morphisms on architecture codes (paper §3.1, docs/design.md §2).

Three ops change a :class:`~spnas.arch.SerialCode`:

- :class:`Expand` ``expand(s2,after=3)``: insert a ``1`` block after an existing block of a
  stage (never first in a stage, so strides stay), starting as an exact identity;
- :class:`Swap` ``swap(b1,left)`` / ``swap(b1,right)``: move a stage boundary by one block; the
  moved block keeps its weights, only strides change;
- :class:`AddStage` ``add_stage``: append a stage of one ``1`` block (a new FPN level).

:func:`mutate` draws a few random valid ops for the search's proposals, and :func:`trace`
follows every block through a list of ops, by identity; :func:`inherit` uses it to load a
parent's weights into the child. Only :func:`inherit` needs torch, and imports it on first use.

Example::

    >>> from spnas.morphism import apply_all, parse_ops, trace
    >>> ops = parse_ops("expand(s2,after=0); swap(b0,left)")
    >>> str(apply_all("BB(11,d1,d1,d1)", ops))
    'BB(1,1d1,d11,d1)'
    >>> m = trace("BB(11,d1,d1,d1)", ops)
    >>> m.parent_of(1, 0), m.new_blocks()
    (BlockRef(stage=0, index=1), (BlockRef(stage=2, index=1),))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spnas.morphism._mutate import DEFAULT_WEIGHTS, NoCandidateError, check_op_weights, mutate
from spnas.morphism._ops import (
    DIRECTIONS,
    OP_KINDS,
    AddStage,
    BlockMap,
    BlockRef,
    Expand,
    Op,
    Swap,
    apply,
    apply_all,
    format_ops,
    parse_op,
    parse_ops,
    trace,
    valid_ops,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "DIRECTIONS",
    "OP_KINDS",
    "AddStage",
    "BlockMap",
    "BlockRef",
    "Expand",
    "InheritReport",
    "NoCandidateError",
    "Op",
    "Swap",
    "apply",
    "apply_all",
    "check_op_weights",
    "find_backbone",
    "format_ops",
    "inherit",
    "mutate",
    "parse_op",
    "parse_ops",
    "trace",
    "valid_ops",
]

if TYPE_CHECKING:
    from spnas.morphism._inherit import InheritReport, find_backbone, inherit

_TORCH_API = ("InheritReport", "find_backbone", "inherit")


def __getattr__(name: str) -> Any:
    # Inheritance works on torch tensors; codes and ops do not, and the sampler imports them on
    # every decision, so torch is imported only when inheritance is first used.
    if name in _TORCH_API:
        from spnas.morphism import _inherit

        return getattr(_inherit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
