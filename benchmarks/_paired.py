"""Paired comparisons of retrained networks: disjoint verification seeds, paired t intervals.

A benchmark that compares two networks retrains both with the same seeds, so that each seed
gives one difference in which the architecture is the only change; the 95 % interval of the
mean difference is the library's paired *t* interval (:func:`spnas.search.paired_interval`,
the one ``spnas status`` and ``spnas verify`` quote). The verification seeds are
``VERIFY_SEED_BASE + k``: no search trains with a seed that large, and
:func:`check_disjoint` makes sure of it, so that no verification repeat reuses a run a
network was selected on (which would flatter the network that run selected).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

#: The first verification seed; every seed a search trains with stays below it.
VERIFY_SEED_BASE = 1000


def verification_seeds(count: int) -> list[int]:
    """``count`` verification seeds, ``VERIFY_SEED_BASE + k``.

    Raises:
        ValueError: ``count`` is below 2 (one seed leaves the spread, and so the interval,
            unknown).
    """
    if count < 2:
        raise ValueError(f"verification seeds: {count}: expected 2 or more (an interval needs 2)")
    return [VERIFY_SEED_BASE + k for k in range(count)]


def check_disjoint(verification: Iterable[int], used: Iterable[int], where: str) -> None:
    """Raise unless no verification seed was used during the search ``where`` names.

    Raises:
        ValueError: naming ``where`` and the seeds both used in it and for verification.
    """
    shared = sorted(set(verification) & set(used))
    if shared:
        raise ValueError(
            f"{where}: verification seeds {shared} were also used during the search; "
            f"expected verification seeds disjoint from every search seed"
        )


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a − b`` seed by seed (both retrained with the same seeds, in the same order): the
    differences, their mean, the paired 95 % interval (``None`` under 2 seeds) and whether
    it lies above zero.

    Raises:
        ValueError: ``a`` and ``b`` differ in length (they were not retrained with the same
            seeds).
    """
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} values against {len(b)}: expected one per seed each")
    return summary([x - y for x, y in zip(a, b, strict=True)])


def summary(differences: Sequence[float]) -> dict[str, Any]:
    """The differences, their count and mean, the paired 95 % interval and ``above_zero``."""
    from spnas.search import paired_interval

    interval = paired_interval(differences)
    return {
        "differences": list(differences),
        "n": len(differences),
        "mean": statistics.fmean(differences) if differences else None,
        "ci95": interval,
        "above_zero": interval is not None and interval[0] > 0,
    }


def pooled(per_search: Sequence[Sequence[float]]) -> dict[str, Any]:
    """One comparison pooled over searches, from each search's per-seed differences.

    - ``over_searches``: each search's mean difference, one value a search; its interval
      covers the variation from search to search (what a new search would give): the verdict
      on the method.
    - ``over_seeds``: for each verification seed, the mean difference over the searches; its
      interval holds these searches fixed (only the retraining noise).

    Raises:
        ValueError: the searches were verified with different numbers of seeds.
    """
    if not per_search:
        raise ValueError("pooled: no search: expected one list of differences a search")
    counts = {len(d) for d in per_search}
    if len(counts) != 1:
        raise ValueError(f"pooled: searches verified with {sorted(counts)} seeds: expected one")
    by_seed = [statistics.fmean(column) for column in zip(*per_search, strict=True)]
    return {
        "searches": len(per_search),
        "over_searches": summary([statistics.fmean(d) for d in per_search]),
        "over_seeds": summary(by_seed),
    }
