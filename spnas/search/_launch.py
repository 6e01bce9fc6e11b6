"""Local workers: start them, pass stop signals on to them, and watch the search until they exit.

What ``spnas search`` and ``spnas verify`` run on one machine (detectron2 keeps its ``launch``
in the library likewise, and its scripts thin). Each worker is a ``spnas worker`` process with
its own threads, devices and log file; the storage URL reaches it in its environment, never on
its command line (which ``ps`` shows).

SIGTERM and SIGINT are forwarded to the workers, which fail their running trial, queue its
retry and exit 128 + the signal (143 for SIGTERM, the shell's convention); workers still alive
:data:`STOP_TIMEOUT_S` after a signal are killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spnas.search._state import SearchState

_logger = logging.getLogger(__name__)

#: After forwarding a signal, how long the launcher waits for its workers before killing them.
STOP_TIMEOUT_S = 120.0
#: A process stopped by signal N exits 128 + N (the shell's convention: 143 for SIGTERM).
STOPPED_EXIT = 128
#: The exit codes of a worker that a stop signal ended cleanly (its trial re-queued).
STOPPED_CODES = frozenset(STOPPED_EXIT + sig for sig in (signal.SIGTERM, signal.SIGINT))


@dataclasses.dataclass(frozen=True)
class Launched:
    """How a :func:`launch_workers` ended.

    Attributes:
        state: the search's state when the last worker exited (``None`` if never read).
        received: the stop signals received (and forwarded) meanwhile, in order.
        returncodes: every worker's exit status.
    """

    state: SearchState | None
    received: tuple[int, ...]
    returncodes: tuple[int | None, ...]

    def exit_code(self) -> int:
        """The launcher's exit status: 0 when the search is done; when stopped by a signal,
        128 + the signal if every worker stopped cleanly (0 if the search was done anyway),
        else 1; 1 when the search failed or a worker did."""
        if self.received:
            # Preempted: a clean stop when every worker re-queued its trial and exited 0 (the
            # search was done) or 128 + the signal; then, like them, 128 + the signal.
            if not all(code == 0 or code in STOPPED_CODES for code in self.returncodes):
                return 1
            done = self.state is not None and self.state.done
            return 0 if done else STOPPED_EXIT + self.received[0]
        return 0 if self.state is not None and self.state.phase == "done" else 1


def launch_workers(
    name: str,
    storage: str,
    workers: int,
    *,
    threads: int,
    logs: Path,
    gpus_per_trial: int = 1,
) -> Launched:
    """Run ``workers`` local ``spnas worker`` processes on study ``name`` until all have exited,
    showing the search's progress, with SIGTERM/SIGINT forwarded to them.

    Args:
        name: the study.
        storage: its storage URL (given to the workers in their environment).
        workers: how many processes.
        threads: torch/OpenMP threads per process.
        logs: the directory of their logs, ``worker-<index>.log`` (appended to).
        gpus_per_trial: devices each worker owns (:func:`worker_gpus`).
    """
    procs = start_workers(name, storage, workers, threads, logs, gpus_per_trial)
    with forward_signals(procs) as received:
        state = watch_workers(name, storage, procs, received)
    return Launched(state, tuple(received), tuple(p.returncode for p in procs))


@contextlib.contextmanager
def forward_signals(procs: list[subprocess.Popen]) -> Iterator[list[int]]:
    """While active, SIGTERM/SIGINT are passed on to every live worker; yields the list of
    signals received (watched by :func:`watch_workers`, which then waits for the workers)."""
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, forward) for sig in stops}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_workers(
    name: str, storage: str, count: int, threads: int, logs: Path, gpus_per_trial: int = 1
) -> list[subprocess.Popen]:
    """Start ``count`` ``spnas worker`` processes on study ``name``, each logging to
    ``logs/worker-<index>.log`` with ``threads`` threads and its own devices."""
    from spnas.storage import STORAGE_ENV

    gpus = visible_gpus()
    procs = []
    for index in range(count):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # Workers share the cores: OpenMP threads that spin while waiting would starve the
        # other workers (measured: a training step 20x slower on a loaded 2-core machine).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(gpus, index, gpus_per_trial))
        # The URL may hold a password: in the environment, not on the command line.
        env[STORAGE_ENV] = storage
        command = [sys.executable, "-m", "spnas", "worker", "--study", name]
        command += ["--threads", str(threads)]
        log = open(logs / f"worker-{index}.log", "a", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def worker_gpus(gpus: list[str], index: int, gpus_per_trial: int) -> list[str]:
    """The devices worker ``index`` owns: the next ``gpus_per_trial`` of ``gpus``, round
    robin, so that workers share devices when there are more workers than devices allow."""
    if gpus_per_trial > len(gpus):
        from spnas.exceptions import ConfigError

        raise ConfigError(
            f"schedule.gpus_per_trial={gpus_per_trial}: only {len(gpus)} GPU(s) visible "
            f"({','.join(gpus)})"
        )
    start = index * gpus_per_trial
    return [gpus[(start + i) % len(gpus)] for i in range(gpus_per_trial)]


def visible_gpus() -> list[str]:
    """The devices this process may hand out: ``CUDA_VISIBLE_DEVICES``, else every CUDA
    device torch sees, else none (CPU workers)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA runtime: CPU workers
        return []


def _describe(state: SearchState, finished: int) -> str:
    best = state.best_parallel or state.best_serial
    text = f"{finished} trial(s) done, {state.phase}"
    if state.phase == "serial":
        text += f" round {state.round}, stuck {state.stuck}"
    if best is not None:
        code = f"{best.arch}" + (f" {best.parallel}" if best.parallel else "")
        text += f", best {best.value:.2f} {code}"
    if state.waiting_for:
        text += f" ({state.waiting_for})"
    return text


def watch_workers(
    name: str, storage: str, procs: list[subprocess.Popen], received: list[int] | None = None
) -> SearchState | None:
    """Show the search's progress until every worker has exited; returns its last state.

    On a terminal a tqdm bar updates in place; in a log file a line is written when the
    search's status changes. Once a signal was forwarded (``received``), workers still alive
    after :data:`STOP_TIMEOUT_S` are killed.
    """
    from tqdm import tqdm

    from spnas.search._state import SearchState
    from spnas.search._worker import load_search_study

    study, config = load_search_study(name, storage)
    state = None
    interactive = sys.stdout.isatty()
    bar = tqdm(desc="search", unit="trial", dynamic_ncols=True, disable=not interactive)
    last = ""
    stopping = 0.0
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            state = SearchState.from_trials(trials, config)
            finished = sum(1 for t in trials if t.state.is_finished())
            text = _describe(state, finished)
            if text != last:
                if interactive:
                    bar.n = finished
                    bar.set_postfix_str(text.split(", ", 1)[-1])
                else:
                    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
                last = text
            if all(p.poll() is not None for p in procs):
                break
            if received:
                stopping = stopping or time.monotonic()
                if time.monotonic() - stopping > STOP_TIMEOUT_S:
                    for p in procs:
                        p.kill()
            time.sleep(0.5 if received else 2.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        bar.close()
    failed = [
        i
        for i, p in enumerate(procs)
        if p.returncode not in (0, None) and not (received and p.returncode in STOPPED_CODES)
    ]
    if failed:
        _logger.warning("worker(s) %s exited with an error; see their logs", failed)
    return state
