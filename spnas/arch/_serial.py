"""Serial architecture codes: ``BNB(111,d111,d1111,d11)``.

The grammar (docs/design.md §1)::

    code   := block "(" stage (sep stage)* ")"
    block  := "BB" | "BNB" | "XB"
    sep    := "," | ";"          (";" is accepted, "," is emitted)
    stage  := ("1" | "d")+       one character per block; "d" doubles the base width there

Spaces are allowed around separators and parentheses. Columns in error messages are 1-based
positions in the text as given.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

from spnas.arch._scanner import Scanner
from spnas.exceptions import ArchError

#: Output channels of a block are ``n * EXPANSION[block]`` for base width ``n``.
EXPANSION: dict[str, int] = {"BB": 1, "BNB": 4, "XB": 4}
BLOCK_TYPES: tuple[str, ...] = tuple(EXPANSION)

_PLAIN = "1"
_DOUBLE = "d"
_SEPARATORS = ",;"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block of a serial network, as the code describes it.

    Attributes:
        stage: 0-based stage index; the stage's outputs are named ``res{stage + 2}``.
        index: 0-based position inside the stage.
        position: 0-based position in the whole network.
        doubles: whether the block is a ``d`` block.
        width_mult: the block's base width ``n`` divided by the network's base width.
        in_mult: the block's input channels divided by the network's base width.
        out_mult: the block's output channels divided by the network's base width.
        stride: 2 for the first block of every stage but the first, else 1.
    """

    stage: int
    index: int
    position: int
    doubles: bool
    width_mult: int
    in_mult: int
    out_mult: int
    stride: int

    @property
    def has_projection(self) -> bool:
        """Whether the shortcut is a 1×1 conv + norm (channels change) rather than identity."""
        return self.in_mult != self.out_mult


@dataclasses.dataclass(frozen=True)
class SerialCode:
    """A serial-level architecture: block type and, per stage, one character per block.

    Instances are immutable, hashable and compare by value; ``str(code)`` is the canonical
    paper form, and ``SerialCode.parse(str(code)) == code``.

    Args:
        block: ``"BB"``, ``"BNB"`` or ``"XB"``.
        stages: one string per stage, made of ``"1"`` and ``"d"``.
    """

    block: str
    stages: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.block not in EXPANSION:
            raise ArchError(
                f"unknown block type {self.block!r}, expected one of {', '.join(BLOCK_TYPES)}"
            )
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ArchError(f"{self.block} code has no stages, expected at least one")
        for i, stage in enumerate(self.stages):
            if not stage:
                raise ArchError(f"stage {i} of {self.block} code is empty, expected '1' or 'd'")
            bad = [c for c in stage if c not in (_PLAIN, _DOUBLE)]
            if bad:
                raise ArchError(
                    f"stage {i} of {self.block} code has {bad[0]!r}, expected '1' or 'd'"
                )

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, text: str) -> SerialCode:
        """Parse the paper format, e.g. ``"BNB(111,d111,d1111,d11)"``.

        Raises:
            ArchError: naming the column and what was expected.
        """
        if isinstance(text, SerialCode):
            return text
        if not isinstance(text, str):
            raise ArchError(f"serial code must be a string, got {type(text).__name__}")
        return _parse_cached(text)

    @classmethod
    def from_vega(cls, text: str, block: str = "BNB") -> SerialCode:
        """Parse Vega's format, e.g. ``"111-2111-211111-211"`` (``2`` = ``d``, ``-`` = stage).

        Raises:
            ArchError: naming the column and what was expected.
        """
        if not isinstance(text, str):
            raise ArchError(f"Vega code must be a string, got {type(text).__name__}")
        if block not in EXPANSION:
            raise ArchError(
                f"unknown block type {block!r} for Vega code {text!r}, "
                f"expected one of {', '.join(BLOCK_TYPES)}"
            )
        stages: list[str] = []
        current: list[str] = []
        for column, char in enumerate(text, start=1):
            if char in "12":
                current.append(_PLAIN if char == "1" else _DOUBLE)
            elif char == "-":
                if not current:
                    raise ArchError(
                        f"invalid Vega code {text!r}: column {column}: empty stage, "
                        "expected '1' or '2'"
                    )
                stages.append("".join(current))
                current = []
            else:
                raise ArchError(
                    f"invalid Vega code {text!r}: column {column}: unexpected {char!r}, "
                    "expected '1', '2' or '-'"
                )
        if not current:
            raise ArchError(
                f"invalid Vega code {text!r}: column {len(text) + 1}: "
                "empty stage, expected '1' or '2'"
            )
        stages.append("".join(current))
        return cls(block, tuple(stages))

    def to_vega(self) -> str:
        """The code in Vega's format (block type not included)."""
        return "-".join(s.replace(_DOUBLE, "2") for s in self.stages)

    def __str__(self) -> str:
        return f"{self.block}({','.join(self.stages)})"

    def __hash__(self) -> int:
        # Computed once: a proposal puts every network of the history in a set, at every
        # decision (spnas.search._proposals).
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.block, self.stages))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        # Without the hash: a str's hash differs from one process to another.
        return {"block": self.block, "stages": self.stages}

    def __repr__(self) -> str:
        return f"SerialCode({str(self)!r})"

    # ------------------------------------------------------------------ structure
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    @property
    def num_doublings(self) -> int:
        return sum(s.count(_DOUBLE) for s in self.stages)

    @property
    def expansion(self) -> int:
        """Output channels of a block divided by its base width."""
        return EXPANSION[self.block]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Detectron2 names of the stage outputs: ``res2, res3, …``."""
        return tuple(f"res{i + 2}" for i in range(self.num_stages))

    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every block with its width, channels (as multiples of the base width) and stride."""
        return tuple(self._iter_blocks())

    def _iter_blocks(self) -> Iterator[BlockSpec]:
        width = 1
        in_mult = 1  # the stem outputs base_width channels
        position = 0
        for stage, chars in enumerate(self.stages):
            for index, char in enumerate(chars):
                if char == _DOUBLE:
                    width *= 2
                out_mult = width * self.expansion
                yield BlockSpec(
                    stage=stage,
                    index=index,
                    position=position,
                    doubles=char == _DOUBLE,
                    width_mult=width,
                    in_mult=in_mult,
                    out_mult=out_mult,
                    stride=2 if index == 0 and stage > 0 else 1,
                )
                in_mult = out_mult
                position += 1

    def stage_out_mults(self) -> tuple[int, ...]:
        """Output channels of each stage divided by the base width."""
        outs: list[int] = [0] * self.num_stages
        for spec in self._iter_blocks():
            outs[spec.stage] = spec.out_mult
        return tuple(outs)

    def stage_channels(self, base_width: int) -> tuple[int, ...]:
        """Output channels of each stage for a given base width."""
        return tuple(base_width * m for m in self.stage_out_mults())

    def stage_strides(self) -> tuple[int, ...]:
        """Output stride of each stage relative to the image: ``4 · 2^i``."""
        return tuple(4 * 2**i for i in range(self.num_stages))

    def widths(self, base_width: int) -> tuple[int, ...]:
        """Base width ``n`` of every block, in network order."""
        return tuple(base_width * b.width_mult for b in self._iter_blocks())

    def strides(self) -> tuple[int, ...]:
        """Stride of every block, in network order."""
        return tuple(b.stride for b in self._iter_blocks())

    def with_stages(self, stages: tuple[str, ...] | list[str]) -> SerialCode:
        """A code with the same block type and other stages."""
        return SerialCode(self.block, tuple(stages))


class _Parser(Scanner):
    def __init__(self, text: str) -> None:
        super().__init__(text, "serial code")

    def parse(self) -> SerialCode:
        self.skip_spaces()
        start = self.pos
        while self.peek().isalpha():
            self.pos += 1
        block = self.text[start : self.pos]
        if block.upper() not in EXPANSION:
            self.pos = start
            if not block:
                raise self.unexpected(f"a block type ({', '.join(BLOCK_TYPES)})")
            raise self.error(
                f"unknown block type {block!r}, expected one of {', '.join(BLOCK_TYPES)}"
            )
        block = block.upper()
        self.skip_spaces()
        if self.peek() != "(":
            raise self.unexpected("'('")
        self.pos += 1
        stages: list[str] = []
        while True:
            self.skip_spaces()
            chars: list[str] = []
            while self.peek() in (_PLAIN, _DOUBLE):
                chars.append(self.peek())
                self.pos += 1
            if not chars:
                if self.peek() and self.peek() in _SEPARATORS + ")":
                    raise self.error(f"empty stage, expected '{_PLAIN}' or '{_DOUBLE}'")
                raise self.unexpected(f"'{_PLAIN}' or '{_DOUBLE}'")
            stages.append("".join(chars))
            self.skip_spaces()
            char = self.peek()
            if char and char in _SEPARATORS:
                self.pos += 1
                continue
            if char == ")":
                self.pos += 1
                break
            if self.text[self.pos - 1].isspace():
                # Spaces may surround separators but not split a stage (``11 1``).
                raise self.unexpected("',' or ')'")
            if char:
                # A stray character inside a stage (``11x1``) is a typo for a block character.
                raise self.unexpected(f"'{_PLAIN}' or '{_DOUBLE}'")
            raise self.unexpected(f"'{_PLAIN}', '{_DOUBLE}', ',' or ')'")
        self.skip_spaces()
        if self.pos != len(self.text):
            raise self.unexpected("end of code after ')'")
        return SerialCode(block, tuple(stages))


# Codes are immutable, and a search replays its whole history at every decision: thousands of
# the same strings are parsed again and again (measured: 80 % of a decision's time at 1,000
# trials). Errors are not cached (lru_cache does not store exceptions).
@functools.lru_cache(maxsize=65536)
def _parse_cached(text: str) -> SerialCode:
    return _Parser(text).parse()
