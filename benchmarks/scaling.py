"""Throughput of 1 to 256 light worker processes on one search over PostgreSQL.

Each worker is a process forked from this one: an Optuna study with the real
:class:`~spnas.search.SPNASSampler` and a light objective that reads its decision
(:func:`~spnas.search.get_decision`), sleeps ``--trial-seconds`` and scores a hash of the
architecture (the parallel phase's trials return at once). No model, no artifacts, no torch: what is measured is the framework —
decisions in trial-number order, storage round trips, heartbeats — at the number of workers
of a cluster, on one machine.

The search is one serial round of ``--trials-per-worker`` × workers trials
(``serial.max_trials``; ``n_stuck`` too large to end it earlier). Throughput is the number of
serial trials over the time from the end of the seed barrier (when the round can start) to
the last serial trial's end, in trials per minute; ``efficiency`` is throughput /
(workers × throughput of one worker). ``decision_ms_p50`` / ``_p99``: from a serial trial's
creation to its objective starting (waiting for lower-numbered trials to decide, reading the
history, deciding, writing the decision), over the trials created after the seed barrier.
``max_server_connections``: client connections of the PostgreSQL server (pg_stat_activity,
polled every 0.2 s), whatever opened them. ``worker_pss_mb``: proportional memory of one
worker (shared pages split between the processes that share them).
``proxy_cpu_ms_per_trial`` (``--storage grpc``): CPU time of the storage proxy over the run,
per trial of the study; the proxy is one process, so ``proxy_trials_per_min_ceiling`` (its
inverse) bounds the trials a minute it can serve, at any trial length.

``--storage postgresql``: every worker opens the database (``make_storage``: at most
3 connections a worker; the server gets ``max_connections`` 3 × workers + 20, above its
default of 100, so that the count can be measured). ``--storage grpc``: the workers talk to
one ``spnas storage-proxy`` (``grpc://127.0.0.1:PORT``), the only database client; the server
keeps PostgreSQL's default ``max_connections`` of 100.

Run: ``.venv/bin/python benchmarks/scaling.py [--workers 1 8 32 128 256] [--trial-seconds 60]
[--trials-per-worker 3] [--storage postgresql|grpc] [--json]``. It starts its own PostgreSQL
server (and proxy) on loopback, and kills every process it started when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, report

from spnas.search import (
    CONFIG_ATTR,
    Decision,
    SearchConfig,
    SearchState,
    SPNASSampler,
    TrialKind,
    get_decision,
)
from spnas.storage import make_storage

NAME = "scaling"
TARGET_EFFICIENCY = 0.9
MAX_SERVER_CONNECTIONS = 100
#: PostgreSQL's own default; ``--storage postgresql`` raises it to measure past it.
DEFAULT_MAX_CONNECTIONS = 100
PROXY_THREADS = 16
_PR_SET_PDEATHSIG = 1


def study_values(name: str, trials: int) -> dict[str, Any]:
    """One serial round of ``trials`` trials; paths are never used (no engine runs)."""
    return {
        "study": {"name": name, "artifacts": "/nonexistent", "workdir": "/nonexistent"},
        "engine": {"name": "torchvision", "show_progress": False},
        "data": {"dir": "/nonexistent"},
        "model": {"seed_arch": "BB(11,d1,d1,d1)", "width": 8},
        "space": {"min_blocks": 8, "max_blocks": 60, "max_stages": 6, "max_subnets": 1},
        "serial": {"n_stuck": 100000, "n_rounds": 0, "max_trials": trials},
        # The parallel phase ends at once (its barrier and control only), and nothing is
        # verified: the measurement is the serial round.
        "parallel": {"n_stuck": 1, "max_trials": 0},
        "verify": {"enabled": False},
        # One control and no re-evaluations (search.noise_repeats, search.acceptance): the round
        # then has exactly ``trials`` serial trials, which the throughput counts.
        "search": {"wait_seconds": 0.2, "noise_repeats": 1, "acceptance": "greedy"},
    }


class LightObjective:
    """Reads the trial's decision, sleeps, scores a hash of the network; logs its wait."""

    def __init__(self, seconds: float, log: Any) -> None:
        self.seconds = seconds
        self.log = log

    def __call__(self, trial: optuna.Trial) -> float:
        waited = time.time() - trial.datetime_start.timestamp()
        decision = get_decision(trial)
        self.log.write(f"{trial.number} {decision.kind} {1000.0 * waited:.1f}\n")
        self.log.flush()
        if decision.kind in (TrialKind.IDLE, TrialKind.EXHAUSTED):
            raise optuna.TrialPruned(decision.kind)
        if decision.parallel is None:  # the serial phase, which is measured
            time.sleep(self.seconds)
        digest = hashlib.sha256(f"{decision.arch} {decision.parallel}".encode()).digest()
        return 20.0 + 10.0 * int.from_bytes(digest[:4], "big") / 2**32


def _worker(name: str, url: str, seconds: float, log_dir: str, index: int) -> None:
    """One worker process: trials until the search is done (as ``spnas worker`` does)."""
    # Die with the benchmark, however it ends.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    logging.basicConfig(filename=f"{log_dir}/worker-{index}.log", level=logging.INFO, force=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=make_storage(url), sampler=SPNASSampler())
    config = SearchConfig.from_dict(study.user_attrs[CONFIG_ATTR])
    with open(f"{log_dir}/decisions-{index}.txt", "w") as log:
        objective = LightObjective(seconds, log)
        state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
        while not state.done:
            study.optimize(objective, n_trials=1, catch=(Exception,))
            # As run_worker: the sampler's replay of the history as the trial left it.
            ended = study.sampler.take_state_after_trial(study)
            state = ended or SearchState.from_trials(study.get_trials(deepcopy=False), config)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def storage_proxy(db_url: str, log_file: Path) -> Iterator[tuple[str, int]]:
    """A ``spnas storage-proxy`` for ``db_url`` in its own process group; yields its URL and
    process id."""
    port = _free_port()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spnas", "storage-proxy", "--storage", db_url,
             "--port", str(port), "--threads", str(PROXY_THREADS)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield f"grpc://127.0.0.1:{port}", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class ConnectionCounter:
    """Polls the server's client connections (its own excluded) in a thread; keeps the max."""

    def __init__(self, host: str, port: int, user: str) -> None:
        import psycopg2

        self._conn = psycopg2.connect(host=host, port=port, user=user, dbname="postgres")
        self._conn.autocommit = True
        self.max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with self._conn.cursor() as cursor:
            while not self._stop.wait(0.2):
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()"
                )
                self.max = max(self.max, cursor.fetchone()[0])

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def _pss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024.0
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (``None`` without one)."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(root: Path, url: str, counter_args: tuple[str, int, str], workers: int,
        seconds: float, per_worker: int, proxy_pid: int | None) -> dict[str, Any]:  # fmt: skip
    name = f"scaling-{workers}"
    config = SearchConfig.from_dict(study_values(name, per_worker * workers))
    study = optuna.create_study(
        study_name=name, storage=make_storage(url), direction=config.direction
    )
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    del study
    gc.collect()
    log_dir = root / name
    log_dir.mkdir()
    # Forked workers share this process's pages (optuna, sqlalchemy, spnas) until written.
    gc.freeze()
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=_worker, args=(name, url, seconds, str(log_dir), i), daemon=True)
        for i in range(workers)
    ]
    pss: list[float] = []
    proxy_cpu = _cpu_seconds(proxy_pid)
    started = time.monotonic()
    # Fork before the counter's thread starts: a child forked beside a thread may inherit a
    # lock that thread held.
    for proc in procs:
        proc.start()
    with ConnectionCounter(*counter_args) as counter:
        try:
            deadline = started + 3600
            sampled = False
            for proc in procs:
                while proc.is_alive() and time.monotonic() < deadline:
                    proc.join(timeout=1.0)
                    if not sampled and time.monotonic() - started > seconds + 5:
                        pss = [v for p in procs if (v := _pss_mb(p.pid)) is not None]
                        sampled = True
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            for proc in procs:
                proc.join()
            gc.unfreeze()
        wall = time.monotonic() - started
    if proxy_cpu is not None:
        proxy_cpu = _cpu_seconds(proxy_pid) - proxy_cpu
    codes = [proc.exitcode for proc in procs]
    if codes != [0] * workers:
        logs = "\n".join(
            (log_dir / f"worker-{i}.log").read_text(errors="replace")[-2000:]
            for i in range(min(workers, 4))
        )
        raise RuntimeError(f"{workers} workers: exit codes {sorted(set(codes))}\n{logs}")

    trials = optuna.load_study(study_name=name, storage=make_storage(url)).get_trials()
    decided = [(t, Decision.of(t)) for t in trials]
    serial = [
        t for t, d in decided
        if d is not None and d.kind == TrialKind.SERIAL and t.state == optuna.trial.TrialState.COMPLETE
    ]  # fmt: skip
    seed = next(t for t, d in decided if d is not None and d.kind == TrialKind.SEED)
    window = (max(t.datetime_complete for t in serial) - seed.datetime_complete).total_seconds()
    after_seed = {
        t.number
        for t in trials
        if t.datetime_start is not None and t.datetime_start >= seed.datetime_complete
    }
    waits = [
        float(ms)
        for path in log_dir.glob("decisions-*.txt")
        for number, kind, ms in (line.split() for line in path.read_text().splitlines())
        if kind == TrialKind.SERIAL and int(number) in after_seed
    ]
    return {
        "workers": workers,
        "serial_trials": len(serial),
        "window_s": round(window, 2),
        "trials_per_min": round(60.0 * len(serial) / window, 3),
        "decision_ms_p50": _percentile(waits, 50),
        "decision_ms_p99": _percentile(waits, 99),
        "decisions_measured": len(waits),
        "max_server_connections": counter.max,
        "worker_pss_mb": round(statistics.fmean(pss), 1) if pss else None,
        "search_wall_s": round(wall, 1),
        "all_trials": len(trials),
        # The proxy is one process: its CPU per trial bounds the trials a minute it can
        # serve, whatever the workers' hardware (the measure for real trial lengths).
        "proxy_cpu_ms_per_trial": None
        if proxy_cpu is None
        else round(1000.0 * proxy_cpu / len(trials), 1),
        "proxy_trials_per_min_ceiling": None
        if not proxy_cpu
        else round(60.0 * len(trials) / proxy_cpu, 1),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--trial-seconds", type=float, default=60.0)
    parser.add_argument("--trials-per-worker", type=int, default=3)
    parser.add_argument("--storage", choices=("postgresql", "grpc"), default="grpc")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    # A benchmark stopped with SIGTERM (kill, timeout) stops its server and proxy on the way
    # out, instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from spnas.testing import LocalPostgres

    max_connections = (
        DEFAULT_MAX_CONNECTIONS
        if args.storage == "grpc"
        else max(DEFAULT_MAX_CONNECTIONS, 3 * max(args.workers) + 20)
    )
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="spnas-scaling-") as tmp,
        LocalPostgres(max_connections=max_connections) as server,
    ):
        root = Path(tmp)
        db_url = server.new_database("scaling")
        counter_args = (server.host, server.port, server.user)
        with contextlib.ExitStack() as stack:
            url, proxy_pid = db_url, None
            if args.storage == "grpc":
                url, proxy_pid = stack.enter_context(storage_proxy(db_url, root / "proxy.log"))
            for workers in args.workers:
                row = run(
                    root,
                    url,
                    counter_args,
                    workers,
                    args.trial_seconds,
                    args.trials_per_worker,
                    proxy_pid,
                )
                rows.append(row)
                print(
                    f"{workers} worker(s): {row['trials_per_min']:.1f} trials/min, decision "
                    f"p50 {row['decision_ms_p50']} ms, {row['max_server_connections']} "
                    f"connections",
                    flush=True,
                )
    base = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["efficiency"] = (
            None
            if base is None
            else round(row["trials_per_min"] / (row["workers"] * base["trials_per_min"]), 4)
        )
    largest = max(rows, key=lambda r: r["workers"])
    result = {
        "storage": f"{args.storage} (local PostgreSQL server, loopback)",
        "server_max_connections": max_connections,
        "proxy_threads": PROXY_THREADS if args.storage == "grpc" else None,
        "trial_seconds": args.trial_seconds,
        "trials_per_worker": args.trials_per_worker,
        "rows": rows,
        "target": {
            "efficiency": TARGET_EFFICIENCY,
            "max_server_connections": MAX_SERVER_CONNECTIONS,
        },
        "meets_target": largest["efficiency"] is not None
        and largest["efficiency"] >= TARGET_EFFICIENCY
        and all(r["max_server_connections"] <= MAX_SERVER_CONNECTIONS for r in rows),
    }
    report(NAME, result, args)


if __name__ == "__main__":
    main()
