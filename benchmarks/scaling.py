"""Throughput of 1, 2, 4 and 8 worker processes on one search over PostgreSQL.

Each worker is a process running :func:`spnas.search.run_worker` with the real
:class:`~spnas.search.Objective` and :class:`~spnas.search.SPNASSampler`, but a
fixed-duration engine double (:class:`FixedDurationEngine`: it sleeps ``--trial-seconds``
and writes a small weights file), so that what is measured is the framework: decisions in
trial-number order, storage round trips, heartbeats, artifact upload and download.

The search is one serial round of ``--serial-trials`` trials (``serial.max_trials``, with
``n_stuck`` too large to end it earlier). Throughput is the number of serial trials over the
time from the end of the seed barrier (when the round can start) to the last serial trial's
end, in trials per minute;
``efficiency`` is throughput / (workers × throughput of one worker), target ≥ 0.9 at 8.
The seed and parallel phases around the round (barriers: one worker trains while the others
wait) are not part of the measurement.

Run: ``.venv/bin/python benchmarks/scaling.py [--workers 1 2 4 8] [--trial-seconds 4]
[--serial-trials 32] [--json]``. It starts its own PostgreSQL server on loopback.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, report

from spnas.engines.base import (
    DataSpec,
    Engine,
    ExportedDetector,
    InitWeights,
    ModelSpec,
    Reporter,
    Schedule,
    TrialResult,
)

NAME = "scaling"
TARGET_EFFICIENCY_AT_8 = 0.9


class FixedDurationEngine(Engine):
    """An engine double: every trial takes ``seconds`` and scores a hash of its code."""

    name = "fixed-duration"
    show_progress = False

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def build_model(self, spec: ModelSpec, schedule: Schedule | None = None) -> Any:
        raise NotImplementedError("the double builds no model")

    def evaluate(
        self,
        spec: ModelSpec,
        weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        out_dir: str | Path = "output",
    ) -> dict[str, float]:
        raise NotImplementedError("the double only trains")

    def export(
        self, spec: ModelSpec, weights: Path, schedule: Schedule, data: DataSpec, out_dir: Path
    ) -> ExportedDetector:
        raise NotImplementedError("the double only trains")

    def train_eval(
        self,
        spec: ModelSpec,
        init_weights: InitWeights | None,
        schedule: Schedule,
        data: DataSpec,
        reporter: Reporter | None = None,
        out_dir: str | Path = "output",
    ) -> TrialResult:
        import torch

        time.sleep(self.seconds)
        code = f"{spec.arch} {spec.parallel}"
        ap = 20.0 + 10.0 * int(hashlib.sha256(code.encode()).hexdigest()[:8], 16) / 16**8
        weights = Path(out_dir) / "model_final.pth"
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"backbone.bottom_up.stem.conv1.weight": torch.zeros(8, 3, 7, 7)}, weights)
        return TrialResult(
            metrics={"AP": ap},
            weights=weights,
            gmacs=1.0,
            params_m=1.0,
            train_seconds=self.seconds,
            eval_seconds=0.0,
            images_per_second=0.0,
            iterations=1,
            inherited_fraction=None,
        )


def _worker(name: str, url: str, seconds: float, log_file: str) -> None:
    """One worker process (one torch thread: the double does not compute)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(filename=log_file, level=logging.INFO, force=True)
    from spnas.search import Objective, load_search_study, run_worker

    _, config = load_search_study(name, url)
    run_worker(name, url, objective=Objective(config, engine=FixedDurationEngine(seconds)))


def study_values(root: Path, name: str, url: str, serial_trials: int) -> dict[str, Any]:
    return {
        "study": {
            "name": name,
            "storage": url,
            "artifacts": str(root / name / "artifacts"),
            "workdir": str(root / name / "work"),
        },
        "engine": {"name": "torchvision", "show_progress": False},
        "data": {"dir": str(root / "data")},
        "model": {"seed_arch": "BB(11,d1,d1,d1)", "width": 8},
        "space": {"min_blocks": 8, "max_blocks": 30, "max_stages": 6, "max_subnets": 1},
        "serial": {"n_stuck": 1000, "n_rounds": 0, "max_trials": serial_trials},
        "parallel": {"n_stuck": 1, "max_trials": 1, "budget_ratio": 3.0},
        "reignite": {"epochs": 1, "image_size": 16, "batch_size": 8},
        "schedule": {"iters": 1, "ims_per_batch": 1, "num_workers": 0, "device": "cpu"},
        "search": {"wait_seconds": 0.2},
    }


def run(root: Path, url: str, workers: int, seconds: float, serial_trials: int) -> dict[str, Any]:
    from spnas.search import Decision, SearchConfig, create_search_study

    name = f"scaling-{workers}"
    config = SearchConfig.from_dict(study_values(root, name, url, serial_trials))
    study = create_search_study(config, url)
    # No connection of this process stays open while the workers run.
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    if engine is not None:
        engine.dispose()
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=_worker, args=(name, url, seconds, str(root / f"{name}-{index}.log"))
        )
        for index in range(workers)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=3600)
    wall = time.monotonic() - started
    codes = [proc.exitcode for proc in procs]
    if codes != [0] * workers:
        logs = "\n".join(
            (root / f"{name}-{i}.log").read_text(errors="replace")[-3000:] for i in range(workers)
        )
        raise RuntimeError(f"{workers} workers: exit codes {codes}\n{logs}")

    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    serial = [
        t
        for t in trials
        if (d := Decision.of(t)) is not None
        and d.kind == "serial"
        and t.state == optuna.trial.TrialState.COMPLETE
    ]
    # The round starts when the seed barrier completes: trials asked earlier only waited.
    seed = next(t for t in trials if (d := Decision.of(t)) is not None and d.kind == "seed")
    window = (max(t.datetime_complete for t in serial) - seed.datetime_complete).total_seconds()
    return {
        "workers": workers,
        "serial_trials": len(serial),
        "window_s": window,
        "trials_per_minute": 60.0 * len(serial) / window,
        "search_wall_s": wall,
        "all_trials": len(trials),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trial-seconds", type=float, default=4.0)
    parser.add_argument("--serial-trials", type=int, default=32)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from spnas.data.synthetic import make_synthetic_dataset
    from spnas.testing import LocalPostgres

    rows = []
    with tempfile.TemporaryDirectory(prefix="spnas-scaling-") as tmp, LocalPostgres() as server:
        root = Path(tmp)
        make_synthetic_dataset(root / "data", train=8, val=4, size=64, show_progress=False)
        for workers in args.workers:
            url = server.new_database(f"scaling_{workers}")
            row = run(root, url, workers, args.trial_seconds, args.serial_trials)
            rows.append(row)
            print(
                f"{workers} worker(s): {row['trials_per_minute']:.1f} trials/min "
                f"({row['serial_trials']} serial trials in {row['window_s']:.1f} s)",
                flush=True,
            )
    base = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["efficiency"] = (
            None
            if base is None
            else row["trials_per_minute"] / (row["workers"] * base["trials_per_minute"])
        )
    at_8 = next((r for r in rows if r["workers"] == 8), None)
    result = {
        "storage": "postgresql (local server, loopback)",
        "trial_seconds": args.trial_seconds,
        "ideal_trials_per_minute_per_worker": 60.0 / args.trial_seconds,
        "rows": rows,
        "target_efficiency_at_8": TARGET_EFFICIENCY_AT_8,
        "efficiency_at_8": None if at_8 is None else at_8["efficiency"],
        "meets_target": None
        if at_8 is None or at_8["efficiency"] is None
        else at_8["efficiency"] >= TARGET_EFFICIENCY_AT_8,
    }
    report(NAME, result, args)


if __name__ == "__main__":
    main()
