"""``spnas search``, ``spnas worker`` and ``spnas status``: running and watching a search.

- ``spnas search STUDY.yaml [--workers N] [--storage URL] [--set key=value …]`` creates the
  study (idempotent: an existing one with the same configuration is resumed), prepares the data
  and runs N local worker processes until the search is done, showing progress. With
  ``--workers 0`` it creates (and checks) the study and exits: the cluster recipes' creation
  step, after which ``spnas worker`` processes run the search on the nodes.
- ``spnas worker --study NAME --storage URL`` joins a search from any node; it needs no YAML.
- ``spnas status --study NAME --storage URL [--json]`` prints the phase, round, best networks
  and the trials.
- ``spnas resume --study NAME --storage URL`` queues a new attempt of the barrier that made a
  search fail (workers starting on a failed search do the same).

Every command takes the storage URL from ``--storage``, ``--storage-file FILE`` or the
environment variable ``SPNAS_STORAGE``; ``spnas search`` gives it to its workers in their
environment, never on their command line (which ``ps`` shows).

``spnas search`` forwards SIGTERM and SIGINT to its workers and waits for them: each fails
its running trial, queues its retry and exits 128 + the signal (143 for SIGTERM, the shell's
convention; 0 when the search was done anyway), and so does ``spnas search``: a Kubernetes
Indexed Job then replaces the pod instead of counting its index as succeeded, and a preempted
search resumes at once when started again.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import io
import logging
import os
import signal
from pathlib import Path
from typing import Any

from spnas.cli._json import dumps
from spnas.cli._storage import add_storage_arguments, storage_url

_logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser(
        "search",
        help="create a search study from a YAML file and run local workers on it",
        description="Create (or resume) an SP-NAS study and run N local workers until done.",
    )
    search.add_argument("study_file", help="study YAML, e.g. studies/smoke.yaml")
    search.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (0: create and check the study, run nothing)",
    )
    add_storage_arguments(search, "storage URL (overrides study.storage)")
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
    add_storage_arguments(worker)
    worker.add_argument("--max-trials", type=int, help="stop after this many trials here")
    worker.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    worker.set_defaults(func=run_worker_command)

    status = subparsers.add_parser(
        "status",
        help="phase, round, best networks and trials of a search",
        description="Print where a search stands.",
    )
    status.add_argument("--study", required=True, help="study name")
    add_storage_arguments(status)
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(func=run_status)

    resume = subparsers.add_parser(
        "resume",
        help="resume a search that stopped as failed, once the cause is fixed",
        description="Queue a new attempt of the barrier trial that failed too often (its "
        "earlier attempts no longer count); then start workers. Completed trials are kept.",
    )
    resume.add_argument("--study", required=True, help="study name")
    add_storage_arguments(resume)
    resume.set_defaults(func=run_resume)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_search(args: argparse.Namespace) -> int:
    from spnas.exceptions import ConfigError
    from spnas.search import (
        SearchConfig,
        check_settings,
        create_search_study,
        launch_workers,
        prepare_data,
    )
    from spnas.storage import STORAGE_ENV, redact

    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: expected 0 (create only) or more")
    config = SearchConfig.from_yaml(args.study_file, list(args.overrides))
    if args.storage or args.storage_file or os.environ.get(STORAGE_ENV):
        study = dataclasses.replace(config.study, storage=storage_url(args))
        config = dataclasses.replace(config, study=study).resolved(Path.cwd())
    storage = config.study.storage
    assert storage is not None
    # What needs no data set first: a synthetic one may be generated into the workdir.
    check_settings(config, storage)
    prepare_data(config)
    create_search_study(config, storage)
    if args.workers == 0:
        print(
            f"study {config.study.name!r} in {redact(storage)} is ready: start workers with "
            f"`spnas worker --study {config.study.name}` and the same storage"
        )
        return 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    logs = Path(config.study.workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"study {config.study.name!r} in {redact(storage)}: {args.workers} worker(s), "
        f"{threads} thread(s) each, logs in {logs}"
    )
    launched = launch_workers(
        config.study.name,
        storage,
        args.workers,
        threads=threads,
        logs=logs,
        gpus_per_trial=config.schedule.gpus_per_trial,
    )
    _print_status(_status(config.study.name, storage))
    return launched.exit_code()


def _dump_stacks_on_sigusr1() -> None:
    """A worker that seems stuck: ``kill -USR1 PID`` writes every thread's stack to its log."""
    if not hasattr(signal, "SIGUSR1"):  # Windows
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except io.UnsupportedOperation:  # stderr is no file (captured, embedded): nowhere to write
        _logger.debug("stack dumps on SIGUSR1 unavailable: stderr has no file descriptor")


def run_worker_command(args: argparse.Namespace) -> int:
    # Until run_worker takes SIGTERM over (after torch and the study are loaded), it stops the
    # worker like Ctrl-C: no trial is running yet, so there is nothing to re-queue.
    from spnas.search import STOPPED_EXIT, stop_before_joining, stopped_by

    signal.signal(signal.SIGTERM, stop_before_joining)
    signal.signal(signal.SIGINT, stop_before_joining)
    _dump_stacks_on_sigusr1()
    try:
        from spnas.report import DashboardFigures
        from spnas.search import run_worker

        _set_threads(args.threads)
        # One storage for the whole worker (its connection pool is the worker's budget, see
        # recipes/slurm/spnas.sbatch); a worker on another node reads the data, weights and
        # store from its own mounts, checked against the fingerprint stored at creation.
        state = run_worker(
            args.study,
            storage_url(args),
            max_trials=args.max_trials,
            callbacks=[DashboardFigures()],
            check_data=True,
        )
    except KeyboardInterrupt as exc:
        if type(exc) is not KeyboardInterrupt:  # Preempted escaping run_worker: unexpected
            raise
        _logger.warning("stopped before joining the search")
        return STOPPED_EXIT + (stopped_by() or signal.SIGINT)
    if state.phase == "failed":
        return 1
    signum = stopped_by()
    # Stopped before the search was done: non-zero, so that a Kubernetes Indexed Job does not
    # count the pod's index as succeeded (its podFailurePolicy ignores 143: a new pod).
    return STOPPED_EXIT + signum if signum is not None and not state.done else 0


def run_resume(args: argparse.Namespace) -> int:
    from spnas.search import SearchState, load_search_study, resume_failed_search

    study, config = load_search_study(args.study, storage_url(args))
    retried = resume_failed_search(study, config, settle=0.0)
    state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
    if retried is None and state.phase == "failed":
        # A diverged barrier: retrying it would diverge again (docs/design.md §4.2).
        print(f"study {args.study}: failed and not resumable: {state.reason}")
        return 1
    if retried is None:
        print(f"study {args.study}: not failed (or already resumed); nothing to do")
    else:
        print(f"study {args.study}: queued a new attempt of trial {retried}; start workers")
    return 0


def _status(name: str, storage: str) -> dict[str, Any]:
    from spnas.search import load_search_study, summarize

    study, config = load_search_study(name, storage)
    return summarize(study.get_trials(deepcopy=False), config, name)


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
    for row in status.get("rounds", ()):
        print("  " + _noise_line(row))
    counts = Counter((row["kind"], _shown_state(row)) for row in status["trials"])
    if counts:
        print(
            "  trials: " + ", ".join(f"{k} {s.lower()} {n}" for (k, s), n in sorted(counts.items()))
        )
    for row in status["trials"]:
        value = "" if row["value"] is None else f"{row['value']:.2f}"
        code = (row["arch"] or "") + (f" {row['parallel']}" if row["parallel"] else "")
        print(f"  #{row['number']:<4} {row['kind']:<13} {_shown_state(row):<8} {value:>7}  {code}")
    if status["verify"] is not None:
        _print_verification(status["verify"], metric)


def _noise_line(row: dict[str, Any]) -> str:
    """``round 1: noise σ 0.42 (2 control repeats); 5 candidates, spread 0.80, best +1.9 σ``."""

    def fmt(value: float | None, spec: str = ".2f") -> str:
        return "n/a" if value is None else format(value, spec)

    name = "parallel" if row["round"] == "parallel" else f"round {row['round']}"
    candidates = row["candidates"]
    return (
        f"{name}: noise σ {fmt(row['noise_sigma'])} ({len(row['control']['values'])} control "
        f"repeat(s)); {candidates['count']} candidate(s), spread {fmt(candidates['std'])}, "
        f"best {fmt(candidates['best_gain_in_sigma'], '+.1f')} σ over the control"
    )


def _shown_state(row: dict[str, Any]) -> str:
    """A trial's state as ``spnas status`` shows it: DIVERGED for a diverged training (stored
    as PRUNED, so that it is not retried: docs/design.md §4.2)."""
    return "DIVERGED" if "diverged" in row else row["state"]


def _print_verification(verify: dict[str, Any], metric: str) -> None:
    """The equal-training table: search value against values retrained from scratch."""

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    print(f"verification (retrained from scratch, {verify['repeats']} seed(s) each):")
    print(f"  {'network':<9} {'search ' + metric:>10} {'retrained':>16}  repeats  architecture")
    for n in verify["networks"]:
        retrained = f"{fmt(n['mean'])} ± {fmt(n['std'])}"
        # A diverged repeat shows where: "div@33" (iteration 33).
        diverged = {d["repeat"]: f"div@{d['iteration']}" for d in n.get("diverged", ())}
        repeats = " ".join(
            diverged.get(k, fmt(v)) if v is None else fmt(v)
            for k, v in enumerate(n["retrained_ap"])
        )
        code = n["arch"] + (f" {n['parallel']}" if n["parallel"] else "")
        print(f"  {n['role']:<9} {fmt(n['search_ap']):>10} {retrained:>16}  {repeats}  {code}")
    tau = verify["kendall_tau"]
    print(f"  Kendall τ (search vs retrained): {fmt(tau)}")
    print(f"  {verify['verdict']}")


def run_status(args: argparse.Namespace) -> int:
    status = _status(args.study, storage_url(args))
    if args.json:
        print(dumps(status, indent=2))
    else:
        _print_status(status)
    return 0
