"""The statistics of the benchmarks' paired comparisons (``benchmarks/_paired.py``)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_paired():
    spec = importlib.util.spec_from_file_location("_paired", REPO / "benchmarks" / "_paired.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_paired = _load_paired()

#: Student's t 0.975 quantiles (tables): 1 and 2 degrees of freedom.
T1, T2 = 12.7062, 4.3027


def test_verification_seeds_start_at_the_base() -> None:
    assert _paired.verification_seeds(5) == [1000, 1001, 1002, 1003, 1004]
    with pytest.raises(ValueError, match="verification seeds: 1: expected 2 or more"):
        _paired.verification_seeds(1)


def test_check_disjoint_names_the_shared_seeds() -> None:
    seeds = _paired.verification_seeds(5)
    _paired.check_disjoint(seeds, range(_paired.VERIFY_SEED_BASE), "old search")
    with pytest.raises(ValueError, match=r"small search 0 \(random\): verification seeds \[1002\]"):
        _paired.check_disjoint(seeds, [0, 1, 1002], "small search 0 (random)")


def test_paired_t_interval() -> None:
    # Differences 1, 2, 3: mean 2, s = 1, half-width t(0.975, 2) / sqrt(3).
    result = _paired.paired([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert result["differences"] == [1.0, 2.0, 3.0] and result["n"] == 3
    half = T2 / math.sqrt(3)
    assert result["mean"] == pytest.approx(2.0)
    assert result["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-3)
    assert result["above_zero"] is False
    assert _paired.paired([4.0, 5.0, 6.0], [1.0, 1.0, 1.0])["above_zero"] is True
    single = _paired.paired([3.0], [1.0])
    assert single["ci95"] is None and single["above_zero"] is False
    with pytest.raises(ValueError, match="2 values against 3"):
        _paired.paired([1.0, 2.0], [1.0, 2.0, 3.0])


def test_pooled_over_searches_and_over_seeds() -> None:
    result = _paired.pooled([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    assert result["searches"] == 2
    # One value a search (2 and 4): the search-to-search spread sets the interval.
    over_searches = result["over_searches"]
    assert over_searches["differences"] == [2.0, 4.0]
    assert over_searches["ci95"] == pytest.approx([3 - T1, 3 + T1], abs=1e-3)
    # One value a seed (2, 3, 4): these searches held fixed.
    over_seeds = result["over_seeds"]
    assert over_seeds["differences"] == [2.0, 3.0, 4.0]
    half = T2 / math.sqrt(3)
    assert over_seeds["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-3)
    with pytest.raises(ValueError, match=r"searches verified with \[2, 3\] seeds"):
        _paired.pooled([[1.0, 2.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="no search"):
        _paired.pooled([])
