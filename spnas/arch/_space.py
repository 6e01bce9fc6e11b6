"""The search space: bounds on serial and parallel codes (docs/design.md §1, paper §3.1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from spnas.arch._parallel import ParallelCode
from spnas.arch._serial import BLOCK_TYPES, SerialCode
from spnas.exceptions import ArchError, ConfigError


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Bounds on the architectures the search may visit.

    The defaults are the paper's: 8–60 blocks, 4–7 stages (the paper's "5 to 7" counts the
    stem), at least one block per stage, and up to ``K = 3`` parallel subnets per stage.

    Args:
        min_blocks: fewest blocks in the whole network.
        max_blocks: most blocks in the whole network.
        min_stages: fewest stages (outputs ``res2`` …).
        max_stages: most stages.
        min_blocks_per_stage: fewest blocks in any stage.
        max_subnets: most extra parallel subnets per stage (``K``).
        max_doublings: most ``d`` blocks; ``None`` for no bound. Morphisms never add a ``d``,
            so this only constrains codes drawn from scratch (random search baselines).
        block_types: block types allowed.
    """

    min_blocks: int = 8
    max_blocks: int = 60
    min_stages: int = 4
    max_stages: int = 7
    min_blocks_per_stage: int = 1
    max_subnets: int = 3
    max_doublings: int | None = None
    block_types: tuple[str, ...] = BLOCK_TYPES

    def __post_init__(self) -> None:
        block_types = self.block_types
        if isinstance(block_types, str):  # ``block_types: BNB`` in a study YAML
            block_types = (block_types,)
        object.__setattr__(self, "block_types", tuple(block_types))
        for name in ("min_blocks", "max_blocks", "min_stages", "max_stages", "max_subnets"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"search space {name}={value!r}: expected an integer ≥ 0")
        if not _is_int(self.min_blocks_per_stage) or self.min_blocks_per_stage < 1:
            raise ConfigError(
                f"search space min_blocks_per_stage={self.min_blocks_per_stage!r}: "
                "expected an integer ≥ 1"
            )
        if self.max_doublings is not None and (
            not _is_int(self.max_doublings) or self.max_doublings < 0
        ):
            raise ConfigError(
                f"search space max_doublings={self.max_doublings!r}: "
                "expected an integer ≥ 0 or null"
            )
        if self.min_blocks > self.max_blocks:
            raise ConfigError(
                f"search space min_blocks={self.min_blocks} > max_blocks={self.max_blocks}"
            )
        if self.min_stages > self.max_stages or self.min_stages < 1:
            raise ConfigError(
                f"search space min_stages={self.min_stages}, max_stages={self.max_stages}: "
                "expected 1 ≤ min_stages ≤ max_stages"
            )
        if not self.block_types:
            raise ConfigError(
                f"search space block_types is empty, expected some of {', '.join(BLOCK_TYPES)}"
            )
        unknown = [b for b in self.block_types if b not in BLOCK_TYPES]
        if unknown:
            raise ConfigError(
                f"search space block_types has {unknown[0]!r}, "
                f"expected some of {', '.join(BLOCK_TYPES)}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "space") -> SearchSpace:
        """Build from a mapping (a study YAML section); unknown keys raise ``ConfigError``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ConfigError(
                    f"unknown key '{where}.{key}', expected one of {', '.join(sorted(fields))}"
                )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["block_types"] = list(self.block_types)
        return values

    def violation(self, code: SerialCode) -> str | None:
        """The first bound ``code`` violates, in words; ``None`` when it lies in the space."""
        if code.block not in self.block_types:
            return f"block type {code.block} is not among {', '.join(self.block_types)}"
        if not self.min_blocks <= code.num_blocks <= self.max_blocks:
            return (
                f"{code.num_blocks} blocks, expected {self.min_blocks} to {self.max_blocks} "
                "(min_blocks/max_blocks)"
            )
        if not self.min_stages <= code.num_stages <= self.max_stages:
            return (
                f"{code.num_stages} stages, expected {self.min_stages} to {self.max_stages} "
                "(min_stages/max_stages)"
            )
        for i, n in enumerate(code.blocks_per_stage):
            if n < self.min_blocks_per_stage:
                return (
                    f"stage {i} has {n} block(s), expected at least "
                    f"{self.min_blocks_per_stage} (min_blocks_per_stage)"
                )
        if self.max_doublings is not None and code.num_doublings > self.max_doublings:
            return (
                f"{code.num_doublings} doublings, expected at most {self.max_doublings} "
                "(max_doublings)"
            )
        return None

    def contains(self, code: SerialCode) -> bool:
        return self.violation(code) is None

    def validate(self, code: SerialCode | str) -> SerialCode:
        """Parse if needed and check ``code``; returns it.

        Raises:
            ArchError: naming the code and the violated bound.
        """
        code = SerialCode.parse(code)
        problem = self.violation(code)
        if problem is not None:
            raise ArchError(f"{code} is outside the search space: {problem}")
        return code

    def validate_parallel(
        self, parallel: ParallelCode | str, serial: SerialCode | str
    ) -> ParallelCode:
        """Check that ``parallel`` fits ``serial`` and the bound ``max_subnets``.

        Raises:
            ArchError: naming the codes and what was expected.
        """
        parallel = ParallelCode.parse(parallel)
        serial = SerialCode.parse(serial)
        if parallel.num_stages != serial.num_stages:
            raise ArchError(
                f"parallel code {parallel} has {parallel.num_stages} stages, "
                f"expected {serial.num_stages} to match {serial}"
            )
        for i, k in enumerate(parallel.subnets):
            if k > self.max_subnets:
                raise ArchError(
                    f"parallel code {parallel}: stage {i} has {k} subnets, "
                    f"expected at most {self.max_subnets} (max_subnets)"
                )
        return parallel


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
