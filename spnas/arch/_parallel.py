"""Parallel architecture codes: ``(0,2,1,3)``, the number of extra subnets per stage."""

from __future__ import annotations

import dataclasses
import functools

from spnas.arch._scanner import Scanner
from spnas.exceptions import ArchError


@dataclasses.dataclass(frozen=True)
class ParallelCode:
    """Number of extra parallel subnets ``K_l`` of each stage ``l`` (docs/design.md §3).

    ``ParallelCode((0, 0, 0, 0))`` is the SerialNet itself. Immutable, hashable, and
    ``ParallelCode.parse(str(code)) == code``.
    """

    subnets: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "subnets", tuple(self.subnets))
        if not self.subnets:
            raise ArchError("parallel code has no stages, expected at least one")
        for i, k in enumerate(self.subnets):
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise ArchError(
                    f"parallel code {self.subnets!r}: stage {i} has {k!r}, "
                    "expected a non-negative integer"
                )

    @classmethod
    def parse(cls, text: str) -> ParallelCode:
        """Parse ``"(0,2,1,3)"`` (parentheses optional; ``;`` or ``-`` also separate).

        Raises:
            ArchError: naming the column and what was expected.
        """
        if isinstance(text, ParallelCode):
            return text
        if not isinstance(text, str):
            raise ArchError(f"parallel code must be a string, got {type(text).__name__}")
        return _parse_cached(text)

    @classmethod
    def zeros(cls, num_stages: int) -> ParallelCode:
        """The code of a network without parallel subnets."""
        return cls((0,) * num_stages)

    def __str__(self) -> str:
        return "(" + ",".join(str(k) for k in self.subnets) + ")"

    def __repr__(self) -> str:
        return f"ParallelCode({str(self)!r})"

    def __len__(self) -> int:
        return len(self.subnets)

    def __getitem__(self, stage: int) -> int:
        return self.subnets[stage]

    @property
    def num_stages(self) -> int:
        return len(self.subnets)

    @property
    def total(self) -> int:
        """Number of extra subnets over all stages."""
        return sum(self.subnets)

    def add(self, stage: int) -> ParallelCode:
        """The code with one more subnet at ``stage``."""
        subnets = list(self.subnets)
        subnets[stage] += 1
        return ParallelCode(tuple(subnets))


_DIGITS = "0123456789"
_SEPARATORS = ",;-"


class _Parser(Scanner):
    """Reads ``(k,k,…)``."""

    def __init__(self, text: str) -> None:
        super().__init__(text, "parallel code")

    def parse(self) -> list[int]:
        self.skip_spaces()
        opened = self.peek() == "("
        if opened:
            self.pos += 1
        subnets: list[int] = []
        while True:
            self.skip_spaces()
            start = self.pos
            while self.peek() and self.peek() in _DIGITS:
                self.pos += 1
            if self.pos == start:
                raise self.unexpected("a non-negative integer")
            subnets.append(int(self.text[start : self.pos]))
            self.skip_spaces()
            if self.peek() and self.peek() in _SEPARATORS:
                self.pos += 1
                continue
            break
        if opened:
            if self.peek() != ")":
                raise self.unexpected("',' or ')'")
            self.pos += 1
            self.skip_spaces()
            if self.peek():
                raise self.unexpected("end of code after ')'")
        elif self.peek():
            raise self.unexpected("',' or end of code")
        return subnets


# Immutable, and parsed again at every decision of a search (see _serial._parse_cached).
@functools.lru_cache(maxsize=65536)
def _parse_cached(text: str) -> ParallelCode:
    return ParallelCode(tuple(_Parser(text).parse()))
