"""``spnas search``, ``spnas worker`` and ``spnas status``: running and watching a search.

- ``spnas search STUDY.yaml [--workers N] [--storage URL] [--set key=value …]`` creates the
  study (idempotent: an existing one with the same configuration is resumed), prepares the data
  and runs N local worker processes until the search is done, showing progress.
- ``spnas worker --study NAME --storage URL`` joins a search from any node; it needs no YAML.
- ``spnas status --study NAME --storage URL [--json]`` prints the phase, round, best networks
  and the trials.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spnas.cli._json import dumps

_logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser(
        "search",
        help="create a search study from a YAML file and run local workers on it",
        description="Create (or resume) an SP-NAS study and run N local workers until done.",
    )
    search.add_argument("study_file", help="study YAML, e.g. studies/smoke.yaml")
    search.add_argument("--workers", type=int, default=1, help="local worker processes")
    search.add_argument("--storage", help="storage URL (overrides study.storage)")
    search.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set serial.n_stuck=3 (repeatable)",
    )
    search.add_argument(
        "--threads", type=int, help="torch threads per worker (default: cores / workers)"
    )
    search.set_defaults(func=run_search)

    worker = subparsers.add_parser(
        "worker",
        help="join a search from this machine (no YAML needed)",
        description="Run trials of an existing study until its search is done.",
    )
    worker.add_argument("--study", required=True, help="study name")
    worker.add_argument("--storage", required=True, help="storage URL")
    worker.add_argument("--max-trials", type=int, help="stop after this many trials here")
    worker.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    worker.set_defaults(func=run_worker_command)

    status = subparsers.add_parser(
        "status",
        help="phase, round, best networks and trials of a search",
        description="Print where a search stands.",
    )
    status.add_argument("--study", required=True, help="study name")
    status.add_argument("--storage", required=True, help="storage URL")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(func=run_status)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_search(args: argparse.Namespace) -> int:
    from spnas.exceptions import ConfigError
    from spnas.search import SearchConfig, create_search_study, prepare_data
    from spnas.storage import redact

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    overrides = list(args.overrides)
    if args.storage:
        overrides.append(f"study.storage={args.storage}")
    config = SearchConfig.from_yaml(args.study_file, overrides)
    storage = config.study.storage
    assert storage is not None
    prepare_data(config)
    create_search_study(config, storage)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    logs = Path(config.study.workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"study {config.study.name!r} in {redact(storage)}: {args.workers} worker(s), "
        f"{threads} thread(s) each, logs in {logs}"
    )
    procs = _start_workers(config.study.name, storage, args.workers, threads, logs)
    state = _watch(config.study.name, storage, procs)
    _print_status(_status(config.study.name, storage))
    return 0 if state is not None and state.phase == "done" else 1


def _start_workers(
    name: str, storage: str, count: int, threads: int, logs: Path
) -> list[subprocess.Popen]:
    gpus = _visible_gpus()
    procs = []
    for index in range(count):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # Workers share the cores: OpenMP threads that spin while waiting would starve the
        # other workers (measured: a training step 20x slower on a loaded 2-core machine).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        command = [
            sys.executable,
            "-m",
            "spnas",
            "worker",
            "--study",
            name,
            "--storage",
            storage,
            "--threads",
            str(threads),
        ]
        log = open(logs / f"worker-{index}.log", "a", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA runtime: CPU workers
        return []


def _describe(state: Any, finished: int) -> str:
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


def _watch(name: str, storage: str, procs: list[subprocess.Popen]) -> Any:
    """Show the search's progress until every worker has exited.

    On a terminal a tqdm bar updates in place; in a log file a line is written when the
    search's status changes.
    """
    from tqdm import tqdm

    from spnas.search import load_search_study
    from spnas.search._state import SearchState

    study, config = load_search_study(name, storage)
    state = None
    interactive = sys.stdout.isatty()
    bar = tqdm(desc="search", unit="trial", dynamic_ncols=True, disable=not interactive)
    last = ""
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
            time.sleep(2.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        bar.close()
    failed = [i for i, p in enumerate(procs) if p.returncode not in (0, None)]
    if failed:
        _logger.warning("worker(s) %s exited with an error; see their logs", failed)
    return state


def run_worker_command(args: argparse.Namespace) -> int:
    from spnas.search import check_inputs, load_search_study, run_worker

    # A worker on another node reads the data, weights and store from its own mounts.
    check_inputs(load_search_study(args.study, args.storage)[1])
    _set_threads(args.threads)
    state = run_worker(args.study, args.storage, max_trials=args.max_trials)
    return 0 if state.phase != "failed" else 1


def _status(name: str, storage: str) -> dict[str, Any]:
    from spnas.search import load_search_study
    from spnas.search._state import Decision, SearchState

    study, config = load_search_study(name, storage)
    trials = study.get_trials(deepcopy=False)
    state = SearchState.from_trials(trials, config)
    rows = []
    for trial in trials:
        decision = Decision.of(trial)
        if decision is None or decision.kind == "idle":
            continue
        rows.append(
            {
                "number": trial.number,
                "kind": decision.kind,
                "state": trial.state.name,
                "round": decision.round,
                "arch": None if decision.arch is None else str(decision.arch),
                "parallel": None if decision.parallel is None else str(decision.parallel),
                "AP": trial.user_attrs.get("AP"),
                "value": trial.value,
                "gmacs": trial.user_attrs.get("gmacs"),
            }
        )

    def best_entry(best: Any, parallel: bool) -> dict[str, Any] | None:
        if best is None:
            return None
        attrs = trials[best.number].user_attrs
        entry = {"arch": str(best.arch), "AP": attrs.get("AP"), "value": best.value}
        if parallel:
            entry["parallel"] = str(best.parallel)
        entry["trial"] = best.number
        return entry

    return {
        "study": name,
        "phase": state.phase,
        "done": state.done,
        "round": state.round,
        "metric": config.data.metric,
        "waiting_for": state.waiting_for,
        "reason": state.reason,
        "best": {
            "serial": best_entry(state.best_serial, parallel=False),
            "parallel": best_entry(state.best_parallel, parallel=True),
        },
        "phases": _phase_table(state, config.direction),
        "trials": rows,
    }


def _phase_table(state: Any, direction: str) -> list[dict[str, Any]]:
    """Best value after the seed, each serial round, each reignition and the parallel phase
    (the shape of the paper's Table 6)."""
    groups: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for record in state.records:
        kind = record.decision.kind
        if kind in ("exhausted", "idle"):
            continue
        if kind == "serial":
            name = f"serial round {record.decision.round}"
        elif kind == "reignite":
            name = f"reignite {record.decision.round}"
        elif kind in ("parallel_seed", "parallel"):
            name = "parallel"
        else:
            name = kind
        counts[name] = counts.get(name, 0) + 1
        if record.value is not None:
            groups.setdefault(name, []).append(record.value)
    pick = max if direction == "maximize" else min
    return [
        {
            "phase": name,
            "best": pick(groups[name]) if name in groups else None,
            "trials": counts[name],
        }
        for name in counts
    ]


def _print_status(status: dict[str, Any]) -> None:
    from collections import Counter

    print(
        f"study {status['study']}: phase {status['phase']}"
        + (f" (round {status['round']})" if status["phase"] == "serial" else "")
        + (f" — {status['waiting_for']}" if status["waiting_for"] else "")
        + (f" — {status['reason']}" if status["reason"] else "")
    )
    metric = status["metric"]
    for phase in ("serial", "parallel"):
        best = status["best"][phase]
        if best:
            code = best["arch"] + (f" {best['parallel']}" if phase == "parallel" else "")
            print(
                f"  best {phase:<8} {metric} {best['value']:.2f}  {code}  (trial {best['trial']})"
            )
    baseline = None
    for row in status["phases"]:
        best = row["best"]
        delta = "" if best is None or baseline is None else f" ({best - baseline:+.2f})"
        shown = "—" if best is None else f"{best:.2f}"
        print(f"  {row['phase']:<16} {metric} {shown}{delta}  [{row['trials']} trial(s)]")
        baseline = best if best is not None else baseline
    counts = Counter((row["kind"], row["state"]) for row in status["trials"])
    if counts:
        print(
            "  trials: " + ", ".join(f"{k} {s.lower()} {n}" for (k, s), n in sorted(counts.items()))
        )
    for row in status["trials"]:
        value = "" if row["value"] is None else f"{row['value']:.2f}"
        code = (row["arch"] or "") + (f" {row['parallel']}" if row["parallel"] else "")
        print(f"  #{row['number']:<4} {row['kind']:<13} {row['state']:<8} {value:>7}  {code}")


def run_status(args: argparse.Namespace) -> int:
    status = _status(args.study, args.storage)
    if args.json:
        print(dumps(status, indent=2))
    else:
        _print_status(status)
    return 0
