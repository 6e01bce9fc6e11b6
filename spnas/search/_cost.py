"""What a trial cost in CPU seconds: a measure of its work that other load barely changes.

A trial's wall time (Optuna's start and completion times) grows with whatever else the machine
runs; its CPU seconds (this process's, plus those of the children it waited for: DataLoader
workers, DDP ranks on the CPU) count the work it did, so budgets compared across runs
(``benchmarks/search_vs_random.py``) stay fair on a shared machine. On a GPU they count the
host's side only.
"""

from __future__ import annotations

import os

#: User attribute of a trial that trained: its CPU seconds, whatever its outcome.
CPU_SECONDS_ATTR = "cpu_s"


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children that ended so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
