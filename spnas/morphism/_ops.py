"""Serial-level morphism ops on codes: expand, swap, add_stage (docs/design.md §2, paper §3.1).

Ops are small frozen dataclasses. ``str(op)`` is a short text form that :func:`parse_op` reads
back, so a trial can store its ops as a plain string attribute::

    expand(s2,after=3)    insert a "1" block after block 3 of stage 2
    swap(b1,left)         move the last block of stage 1 to the start of stage 2
    swap(b1,right)        move the first block of stage 2 to the end of stage 1
    add_stage             append a stage of one "1" block

Blocks keep their identity through ops: :func:`trace` says which parent block every child
block descends from, which is what weight inheritance needs (a swapped block changes stage, not
weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import ClassVar, NamedTuple, TypeVar

from spnas.arch import Scanner, SearchSpace, SerialCode
from spnas.exceptions import ArchError

#: Op kinds, in the order :func:`valid_ops` lists them.
OP_KINDS: tuple[str, ...] = ("expand", "swap", "add_stage")

LEFT = "left"
RIGHT = "right"
DIRECTIONS: tuple[str, ...] = (LEFT, RIGHT)

_PLAIN = "1"
_OPS_SEPARATOR = ";"


class BlockRef(NamedTuple):
    """A block of a code: 0-based ``stage`` and 0-based ``index`` inside the stage.

    A plain tuple underneath, so ``BlockRef(1, 0) == (1, 0)``.
    """

    stage: int
    index: int


# A block while ops are rewritten: where it came from in the parent (``None`` for a block an op
# created) and its character. Working on these lists lets apply() and trace() share one
# implementation of each op.
_Slot = tuple[BlockRef | None, str]
_Stages = list[list[_Slot]]

_O = TypeVar("_O", bound="Op")


def _check_index(op: Op, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ArchError(f"{type(op).__name__} op: {name}={value!r}, expected an integer ≥ 0")


@dataclasses.dataclass(frozen=True)
class Op:
    """Base class of the morphism ops; use :class:`Expand`, :class:`Swap`, :class:`AddStage`.

    Ops are immutable, hashable and compare by value; ``Op.parse(str(op)) == op``.
    """

    #: The op's name in its text form and in mutation weights.
    kind: ClassVar[str] = ""

    @classmethod
    def parse(cls: type[_O], text: str) -> _O:
        """Read an op from its text form, e.g. ``"swap(b0,right)"``.

        Called on a subclass (``Expand.parse``), the text must be an op of that kind.

        Raises:
            ArchError: naming the text, the column and what was expected.
        """
        op = parse_op(text)
        if not isinstance(op, cls):
            raise ArchError(f"invalid op {text!r}: column 1: found {op.kind}, expected {cls.kind}")
        return op

    def violation(self, code: SerialCode) -> str | None:
        """Why this op cannot be applied to ``code``, in words; ``None`` when it can."""
        raise NotImplementedError

    def fits(self, code: SerialCode) -> bool:
        """Whether this op can be applied to ``code``."""
        return self.violation(code) is None

    def _rewrite(self, stages: _Stages) -> None:
        """Apply the op in place to labelled stages it fits."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Expand(Op):
    """Insert a plain ``1`` block right after block ``after`` of stage ``stage``.

    The new block never becomes a stage's first block, so it has stride 1, the width of the
    block before it, equal input and output channels and an identity shortcut: it can start as
    an exact identity (docs/design.md §2).

    Args:
        stage: 0-based stage.
        after: 0-based index, inside the stage, of the block the new block follows.
    """

    stage: int
    after: int
    kind: ClassVar[str] = "expand"

    def __post_init__(self) -> None:
        _check_index(self, "stage", self.stage)
        _check_index(self, "after", self.after)

    def __str__(self) -> str:
        return f"expand(s{self.stage},after={self.after})"

    def violation(self, code: SerialCode) -> str | None:
        if self.stage >= code.num_stages:
            return f"stage {self.stage} does not exist ({code.num_stages} stages)"
        n = len(code.stages[self.stage])
        if self.after >= n:
            return (
                f"stage {self.stage} has {n} block{'s' if n != 1 else ''}, "
                f"so after must be 0 to {n - 1}"
            )
        return None

    def _rewrite(self, stages: _Stages) -> None:
        stages[self.stage].insert(self.after + 1, (None, _PLAIN))


@dataclasses.dataclass(frozen=True)
class Swap(Op):
    """Move the boundary between stage ``boundary`` and ``boundary + 1`` by one block.

    ``left`` moves the last block of stage ``boundary`` to the start of stage ``boundary + 1``
    (the boundary moves left: the stride-2 downsampling happens one block earlier); ``right``
    moves the first block of stage ``boundary + 1`` to the end of stage ``boundary``. The moved
    block keeps its character and its weights; only strides change (paper: "interchange the
    stride of the neighbouring blocks"). No stage may become empty.

    Args:
        boundary: 0-based boundary; boundary ``b`` lies between stages ``b`` and ``b + 1``.
        direction: ``"left"`` or ``"right"``.
    """

    boundary: int
    direction: str
    kind: ClassVar[str] = "swap"

    def __post_init__(self) -> None:
        _check_index(self, "boundary", self.boundary)
        if self.direction not in DIRECTIONS:
            raise ArchError(
                f"Swap op: direction={self.direction!r}, expected {LEFT!r} or {RIGHT!r}"
            )

    def __str__(self) -> str:
        return f"swap(b{self.boundary},{self.direction})"

    def violation(self, code: SerialCode) -> str | None:
        b = self.boundary
        if b >= code.num_stages - 1:
            if code.num_stages == 1:
                return f"boundary {b} does not exist (1 stage, no boundaries)"
            return (
                f"boundary {b} does not exist ({code.num_stages} stages, "
                f"boundaries b0 to b{code.num_stages - 2})"
            )
        if self.direction == LEFT and len(code.stages[b]) == 1:
            return f"moving the only block of stage {b} into stage {b + 1} would empty stage {b}"
        if self.direction == RIGHT and len(code.stages[b + 1]) == 1:
            return (
                f"moving the only block of stage {b + 1} into stage {b} would empty stage {b + 1}"
            )
        return None

    def _rewrite(self, stages: _Stages) -> None:
        b = self.boundary
        if self.direction == LEFT:
            stages[b + 1].insert(0, stages[b].pop())
        else:
            stages[b].append(stages[b + 1].pop(0))


@dataclasses.dataclass(frozen=True)
class AddStage(Op):
    """Append a stage of one plain ``1`` block (stride 2, equal input and output channels).

    Our reading of the 5- and 6-stage networks of paper Table 7 (docs/design.md §2): existing
    stages are unchanged, and the new stage adds an FPN level.
    """

    kind: ClassVar[str] = "add_stage"

    def __str__(self) -> str:
        return "add_stage"

    def violation(self, code: SerialCode) -> str | None:
        return None

    def _rewrite(self, stages: _Stages) -> None:
        stages.append([(None, _PLAIN)])


# ---------------------------------------------------------------------------- text form
def parse_op(text: str) -> Op:
    """Read one op from its text form, e.g. ``"expand(s2,after=3)"``.

    Names are case-insensitive and spaces between tokens are allowed; ``add_stage()`` is
    accepted for ``add_stage``.

    Raises:
        ArchError: naming the text, the 1-based column and what was expected.
    """
    if isinstance(text, Op):
        return text
    if not isinstance(text, str):
        raise ArchError(f"op must be a string, got {type(text).__name__}")
    parser = _OpParser(text, "op")
    op = parser.op()
    parser.skip_spaces()
    if not parser.at_end():
        raise parser.unexpected("end of op")
    return op


def parse_ops(text: str) -> tuple[Op, ...]:
    """Read ops separated by ``;``, e.g. ``"expand(s2,after=3); swap(b0,right)"``.

    The empty (or blank) text is the empty sequence; a trailing ``;`` is allowed.

    Raises:
        ArchError: naming the text, the 1-based column and what was expected.
    """
    if not isinstance(text, str):
        raise ArchError(f"ops must be a string, got {type(text).__name__}")
    parser = _OpParser(text, "ops")
    ops: list[Op] = []
    parser.skip_spaces()
    while not parser.at_end():
        ops.append(parser.op())
        parser.skip_spaces()
        if parser.peek() == _OPS_SEPARATOR:
            parser.pos += 1
            parser.skip_spaces()
        elif not parser.at_end():
            raise parser.unexpected(f"'{_OPS_SEPARATOR}' or end of ops")
    return tuple(ops)


def format_ops(ops: Iterable[Op]) -> str:
    """The text form of a sequence of ops, ``"; "``-separated; :func:`parse_ops` reads it."""
    return f"{_OPS_SEPARATOR} ".join(str(op) for op in ops)


class _OpParser(Scanner):
    def __init__(self, text: str, what: str) -> None:
        super().__init__(text, what, end=what)

    def expect(self, literal: str) -> None:
        self.skip_spaces()
        if self.text[self.pos : self.pos + len(literal)].lower() != literal:
            raise self.unexpected(repr(literal))
        self.pos += len(literal)

    def word(self) -> str:
        self.skip_spaces()
        start = self.pos
        while self.peek().isalpha() or self.peek() == "_":
            self.pos += 1
        return self.text[start : self.pos].lower()

    def integer(self) -> int:
        self.skip_spaces()
        start = self.pos
        while self.peek() and self.peek() in "0123456789":
            self.pos += 1
        if start == self.pos:
            raise self.unexpected("a number")
        return int(self.text[start : self.pos])

    def op(self) -> Op:
        self.skip_spaces()
        start = self.pos
        name = self.word()
        if name == Expand.kind:
            self.expect("(")
            self.expect("s")
            stage = self.integer()
            self.expect(",")
            self.expect("after")
            self.expect("=")
            after = self.integer()
            self.expect(")")
            return Expand(stage, after)
        if name == Swap.kind:
            self.expect("(")
            self.expect("b")
            boundary = self.integer()
            self.expect(",")
            self.skip_spaces()
            word_start = self.pos
            direction = self.word()
            if direction not in DIRECTIONS:
                self.pos = word_start
                if not direction:
                    raise self.unexpected(f"{LEFT!r} or {RIGHT!r}")
                raise self.error(f"unexpected {direction!r}, expected {LEFT!r} or {RIGHT!r}")
            self.expect(")")
            return Swap(boundary, direction)
        if name == AddStage.kind:
            self.skip_spaces()
            if self.peek() == "(":
                self.pos += 1
                self.expect(")")
            return AddStage()
        self.pos = start
        expected = ", ".join(OP_KINDS[:-1]) + f" or {OP_KINDS[-1]}"
        if not name:
            raise self.unexpected(f"an op ({expected})")
        raise self.error(f"unknown op {name!r}, expected {expected}")


# ---------------------------------------------------------------------------- applying ops
def apply(code: SerialCode | str, op: Op | str) -> SerialCode:
    """The code that ``op`` makes of ``code``.

    Raises:
        ArchError: when the op does not fit the code, naming both, e.g.
            ``expand(s5,after=0) does not fit BB(11,d1,d1,d1): stage 5 does not exist
            (4 stages)``.
    """
    return _run(SerialCode.parse(code), (parse_op(op),))[0]


def apply_all(code: SerialCode | str, ops: Iterable[Op | str] | str) -> SerialCode:
    """The code that ``ops``, applied one after the other, make of ``code``.

    Args:
        code: the parent code.
        ops: ops or their text forms, or one string in :func:`format_ops` form.

    Raises:
        ArchError: naming the first op that does not fit, the code it met and its place in
            the sequence.
    """
    return _run(SerialCode.parse(code), _as_ops(ops))[0]


def valid_ops(code: SerialCode | str, space: SearchSpace | None = None) -> tuple[Op, ...]:
    """Every op that can be applied to ``code``: expands, then swaps, then add_stage.

    Args:
        code: the code to change.
        space: when given, leave out ops after which no further ops can bring the code back
            into ``space``: ops never remove blocks or stages, so expand and add_stage are
            left out at ``space.max_blocks`` and add_stage at ``space.max_stages``. Other
            bounds are for the caller to check on the final code.
    """
    code = SerialCode.parse(code)
    ops: list[Op] = []
    can_grow = space is None or code.num_blocks < space.max_blocks
    if can_grow:
        ops.extend(
            Expand(stage, after)
            for stage, chars in enumerate(code.stages)
            for after in range(len(chars))
        )
    for boundary in range(code.num_stages - 1):
        for direction in DIRECTIONS:
            swap = Swap(boundary, direction)
            if swap.fits(code):
                ops.append(swap)
    if can_grow and (space is None or code.num_stages < space.max_stages):
        ops.append(AddStage())
    return tuple(ops)


def _as_ops(ops: Iterable[Op | str] | str) -> tuple[Op, ...]:
    if isinstance(ops, str):
        return parse_ops(ops)
    if isinstance(ops, Op):
        return (ops,)
    return tuple(parse_op(op) for op in ops)


def _labelled(code: SerialCode) -> _Stages:
    return [
        [(BlockRef(stage, index), char) for index, char in enumerate(chars)]
        for stage, chars in enumerate(code.stages)
    ]


def _code_of(block: str, stages: _Stages) -> SerialCode:
    return SerialCode(block, tuple("".join(char for _, char in stage) for stage in stages))


def _run(parent: SerialCode, ops: tuple[Op, ...]) -> tuple[SerialCode, _Stages]:
    stages = _labelled(parent)
    code = parent
    for i, op in enumerate(ops):
        problem = op.violation(code)
        if problem is not None:
            where = ""
            if len(ops) > 1:
                where = f" (op {i + 1} of {len(ops)} in '{format_ops(ops)}' applied to {parent})"
            raise ArchError(f"{op} does not fit {code}: {problem}{where}")
        op._rewrite(stages)
        code = _code_of(parent.block, stages)
    return code, stages


# ---------------------------------------------------------------------------- block identity
@dataclasses.dataclass(frozen=True)
class BlockMap:
    """Where every block of ``child`` comes from in ``parent``, through ``ops``.

    Blocks are followed by identity, not position: a block that a swap moves to another stage
    is the same block with the same weights (its stride changes, which no tensor's shape
    depends on: the shortcut is a projection iff input and output channels differ). Stages
    are never removed or reordered, so child stage ``i`` is parent stage ``i`` for every
    ``i < parent.num_stages``; later stages are new (add_stage).

    Build it with :func:`trace`.

    Attributes:
        parent: the code the ops start from.
        child: the code the ops produce.
        ops: the ops, in order.
        sources: per child stage, per block of that stage, the parent block it descends from,
            or ``None`` for a block an op created (expand, add_stage).
    """

    parent: SerialCode
    child: SerialCode
    ops: tuple[Op, ...]
    sources: tuple[tuple[BlockRef | None, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "sources", tuple(tuple(s) for s in self.sources))
        if tuple(len(s) for s in self.sources) != self.child.blocks_per_stage:
            raise ArchError(
                f"block map sources have {[len(s) for s in self.sources]} blocks per stage, "
                f"expected {list(self.child.blocks_per_stage)} to match {self.child}"
            )

    def parent_of(self, stage: int, index: int) -> BlockRef | None:
        """The parent block that child block ``(stage, index)`` descends from; ``None`` if new.

        Raises:
            ArchError: when the child has no such block.
        """
        _check_block(self.child, "child", stage, index)
        return self.sources[stage][index]

    def child_of(self, stage: int, index: int) -> BlockRef:
        """The child block that parent block ``(stage, index)`` became (ops delete no block).

        Raises:
            ArchError: when the parent has no such block.
        """
        _check_block(self.parent, "parent", stage, index)
        return self._inverse()[BlockRef(stage, index)]

    def items(self) -> tuple[tuple[BlockRef, BlockRef | None], ...]:
        """``(child block, parent block or None)`` for every child block, in network order."""
        return tuple(self._iter_items())

    def as_dict(self) -> dict[BlockRef, BlockRef | None]:
        """``{child block: parent block or None}``."""
        return dict(self._iter_items())

    def positions(self) -> tuple[int | None, ...]:
        """For every child block in network order, its parent block's network position."""
        offsets = [0]
        for n in self.parent.blocks_per_stage:
            offsets.append(offsets[-1] + n)
        return tuple(
            None if src is None else offsets[src.stage] + src.index for _, src in self._iter_items()
        )

    def inherited_blocks(self) -> tuple[BlockRef, ...]:
        """Child blocks that descend from a parent block."""
        return tuple(child for child, src in self._iter_items() if src is not None)

    def new_blocks(self) -> tuple[BlockRef, ...]:
        """Child blocks an op created (expand, add_stage): they start as identities."""
        return tuple(child for child, src in self._iter_items() if src is None)

    def moved_blocks(self) -> tuple[BlockRef, ...]:
        """Inherited child blocks that sit in another stage than in the parent (swaps)."""
        return tuple(
            child
            for child, src in self._iter_items()
            if src is not None and src.stage != child.stage
        )

    def new_stages(self) -> tuple[int, ...]:
        """Child stages the parent lacks (add_stage): their FPN levels are new."""
        return tuple(range(self.parent.num_stages, self.child.num_stages))

    def parent_stage_of(self, stage: int) -> int | None:
        """The parent stage that child stage ``stage`` continues; ``None`` for a new stage."""
        if not 0 <= stage < self.child.num_stages:
            raise ArchError(
                f"child {self.child} has no stage {stage} ({self.child.num_stages} stages)"
            )
        return stage if stage < self.parent.num_stages else None

    def _iter_items(self) -> Iterator[tuple[BlockRef, BlockRef | None]]:
        for stage, sources in enumerate(self.sources):
            for index, src in enumerate(sources):
                yield BlockRef(stage, index), src

    def _inverse(self) -> dict[BlockRef, BlockRef]:
        return {src: child for child, src in self._iter_items() if src is not None}


def _check_block(code: SerialCode, which: str, stage: int, index: int) -> None:
    if not 0 <= stage < code.num_stages:
        raise ArchError(f"{which} {code} has no stage {stage} ({code.num_stages} stages)")
    n = len(code.stages[stage])
    if not 0 <= index < n:
        raise ArchError(
            f"{which} {code} has no block {index} in stage {stage} "
            f"({n} block{'s' if n != 1 else ''})"
        )


def trace(parent: SerialCode | str, ops: Iterable[Op | str] | str) -> BlockMap:
    """Apply ``ops`` to ``parent`` and follow every block through them.

    Args:
        parent: the parent code.
        ops: ops or their text forms, or one string in :func:`format_ops` form.

    Returns:
        The child code with, for each of its blocks, the parent block it descends from.

    Raises:
        ArchError: as :func:`apply_all`.
    """
    parent = SerialCode.parse(parent)
    ops = _as_ops(ops)
    child, stages = _run(parent, ops)
    sources = tuple(tuple(src for src, _ in stage) for stage in stages)
    return BlockMap(parent=parent, child=child, ops=ops, sources=sources)
