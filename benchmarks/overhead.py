"""Time the framework spends per trial outside training, against Optuna's RandomSampler.

For each history size N (100, 1,000, 5,000 completed trials), two studies are filled with the
same number of trials on the same storage:

- an SP-NAS study: a serial round of N trials, each a 3-op mutation of the round's best so far
  (as the search writes them: ``spnas:*`` decision attributes, a seed trial first, the best
  improving now and then), with ``n_stuck`` too large for the round to end;
- a plain study of N trials with one float parameter.

- an SP-NAS study in its parallel phase: a seed, one serial trial that ends the serial phase,
  the parallel seed, and parallel trials up to N (distinct parallel codes of a 7-stage
  network), with ``parallel.n_stuck`` too large for the phase to end.

The histories follow ``--comparison`` (``search.comparison``; default the search's own,
``equal_training``): with equal training each round and the parallel phase have their
``control`` trial (the baseline trained one more schedule, the round's reference) and every
candidate starts from the baseline's weights (its ``parent``; its ``ops`` composed from the
baseline's architecture); with ``greedy`` there is no control and a candidate's parent is the
best so far. Before timing, the history is replayed with :class:`spnas.search.SearchState` and
must ask for a trial of the measured kind: a history the search no longer writes fails there.

Then ``--measure`` trials are run on each without training: ``ask`` (the SPNASSampler replays
the history, waits for nothing, proposes a new mutation of the best — or a new parallel code
within the FLOPs budget — and writes its decision; RandomSampler draws a number) and ``tell``.
``sampler_ms_per_trial`` and ``random_sampler_ms_per_trial`` are the medians of ask + tell
(target at 5,000 trials: ``ratio`` ≤ 2); ``decision_ms`` is the SPNASSampler's
``before_trial`` alone (target: ≤ 10 ms at 5,000 trials), ``parallel_decision_ms`` the same in
the parallel phase, and ``parallel_to_serial`` their ratio (target: ≤ 2). A decision's time is
split into ``decision_storage_ms``, the calls to the storage inside ``before_trial`` (the
history read, the decision's and the params' writes: Optuna's code and the database's), and
``decision_compute_ms``, the rest: the sampler's own work (the replay and the proposal).

Weights travel through the artifact store twice per trial (the parent's down, the child's up):
``artifact`` times ``upload_artifact`` / ``download_artifact`` of a realistic state dict, a
Faster R-CNN with a ResNet-50 SPNet backbone and FPN (about 165 MB), on a file-system store.

Run: ``.venv/bin/python benchmarks/overhead.py [--trials 100 1000 5000]
[--storage sqlite|postgresql] [--comparison equal_training|greedy] [--measure 20]
[--artifact-repeats 3] [--json] [--out FILE]`` (a toy run in seconds: ``--trials 10
--measure 2 --artifact-repeats 1``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, report

from spnas.search import (
    Decision,
    SearchConfig,
    SearchState,
    SPNASSampler,
    TrialKind,
    create_search_study,
)
from spnas.search._config import SearchSection
from spnas.storage import make_storage

NAME = "overhead"
SEED_ARCH = "BB(11,d1,d1,d1)"
#: Seven stages: 4^7 parallel codes, enough distinct ones for 5,000 parallel trials.
PARALLEL_ARCH = "BB(11,d1,d1,d1,1,1,1)"
#: Targets (issue 22): at TARGET_AT trials in history, ask + tell at most TARGET_RATIO times
#: RandomSampler's, and a decision within TARGET_DECISION_MS.
TARGET_AT = 5000
TARGET_RATIO = 2.0
TARGET_DECISION_MS = 10.0
TARGET_PARALLEL_RATIO = 2.0
#: The storage calls a decision makes (timed apart from the sampler's own work).
STORAGE_CALLS = (
    "get_all_trials",
    "get_trial",
    "set_trial_system_attr",
    "set_trial_param",
    "set_trial_state_values",
    "get_trial_system_attrs",
)


def study_config(
    root: Path,
    name: str,
    storage: str,
    phase: str = "serial",
    comparison: str = "equal_training",
) -> SearchConfig:
    """A search stuck in its first serial round (or its parallel phase) for good: every ask
    is a serial (or parallel) proposal."""
    from spnas.data.synthetic import make_synthetic_dataset

    if not (root / "data" / "train.json").is_file():
        make_synthetic_dataset(root / "data", train=2, val=2, size=32, show_progress=False)
    values: dict[str, Any] = {
        "study": {
            "name": name,
            "storage": storage,
            "artifacts": str(root / "artifacts"),
            "workdir": str(root / "work"),
        },
        "data": {"dir": str(root / "data")},
        "model": {"seed_arch": SEED_ARCH, "width": 16},
        "space": {"min_blocks": 8, "max_blocks": 40, "max_stages": 7},
        "serial": {"n_mutations": 3, "n_stuck": 10**9, "n_rounds": 1},
        # One control per round and the plain acceptance rule: the histories below write no
        # control repeats or re-evaluations (search.noise_repeats, search.acceptance), which
        # add trials but not decision work of another kind.
        "search": {
            "wait_seconds": 0.01,
            "comparison": comparison,
            "noise_repeats": 1,
            "acceptance": "greedy",
        },
    }
    if phase == "parallel":
        values["model"]["seed_arch"] = PARALLEL_ARCH
        values["serial"] = {"n_stuck": 1, "n_rounds": 0}
        values["parallel"] = {"n_stuck": 10**9, "budget_ratio": 100.0}
    return SearchConfig.from_dict(values)


def _frozen(config: SearchConfig, history: list[tuple[Decision, float]]) -> list[FrozenTrial]:
    """Completed trials of ``history`` as the search writes them (decision, params, gmacs)."""
    from spnas.search import architecture_distributions, architecture_values

    start = datetime.datetime(2026, 1, 1)
    distributions = architecture_distributions(config)
    trials = []
    for number, (decision, value) in enumerate(history):
        params = architecture_values(config, decision)
        trials.append(
            FrozenTrial(
                number=number,
                state=TrialState.COMPLETE,
                value=value,
                datetime_start=start + datetime.timedelta(minutes=10 * number),
                datetime_complete=start + datetime.timedelta(minutes=10 * number + 9),
                params=params,
                distributions={name: distributions[name] for name in params},
                user_attrs={"gmacs": params["gmacs"]},
                system_attrs=decision.to_attrs(),
                intermediate_values={},
                trial_id=number,
            )
        )
    return trials


def _equal_training(config: SearchConfig) -> bool:
    return config.search.comparison == "equal_training"


def serial_history(config: SearchConfig, n: int, seed: int = 0) -> list[FrozenTrial]:
    """A seed trial and ``n - 1`` serial trials (the round's control among them with equal
    training) as the search writes them."""
    from spnas.morphism import format_ops, mutate

    rng = random.Random(seed)
    seed_arch = config.seed_arch
    history = [(Decision(kind=TrialKind.SEED, arch=seed_arch), 20.0)]
    # The round's reference: the seed itself, or (equal training) its control, which continues
    # the seed's training one more schedule.
    best_arch, best_number, best_value, best_ops = seed_arch, 0, 20.0, ()
    if _equal_training(config):
        history.append((Decision(TrialKind.CONTROL, seed_arch, parent=0, round=1), 20.5))
        best_number, best_value = 1, 20.5
    taken = {str(seed_arch)}
    while len(history) < n:
        child, ops = mutate(best_arch, config.space, rng, n_ops=3, avoid=taken)
        taken.add(str(child))
        ops_text = tuple(format_ops(ops).split("; "))
        if _equal_training(config):
            # From the seed's weights, the best's morphisms first (spnas.search._proposals).
            parent, ops_text = 0, (*best_ops, *ops_text)
        else:
            parent = best_number
        # Most children are a little worse than the best, about one in eight better.
        value = best_value + rng.uniform(-2.0, 0.3)
        history.append(
            (Decision(TrialKind.SERIAL, child, parent=parent, ops=ops_text, round=1), value)
        )
        if value > best_value:
            best_arch, best_number, best_value = child, len(history) - 1, value
            best_ops = ops_text
    return _frozen(config, history)


def parallel_history(config: SearchConfig, n: int, seed: int = 0) -> list[FrozenTrial]:
    """A seed, a worse serial trial (the serial phase ends), the parallel seed, and parallel
    trials of distinct codes up to ``n`` trials (with equal training, a control in the serial
    round and one in the parallel phase), as the search writes them.

    The codes are drawn uniformly among all of them, not by the sampler's FLOPs-inverse
    weights: those favour the cheap stages so strongly that 5,000 distinct draws take hours,
    and would leave the next proposal nothing new near the cheap stages."""
    import itertools

    from spnas.arch import ParallelCode

    rng = random.Random(seed)
    arch = config.seed_arch
    zeros = ParallelCode.zeros(arch.num_stages)
    equal = _equal_training(config)
    worse = arch.with_stages((*arch.stages[:-1], "11"))
    history: list[tuple[Decision, float]] = [(Decision(TrialKind.SEED, arch=arch), 20.0)]
    if equal:
        history.append((Decision(TrialKind.CONTROL, arch, parent=0, round=1), 20.5))
    serial_best = len(history) - 1
    history.append((Decision(TrialKind.SERIAL, worse, parent=0, ops=("expand",), round=1), 10.0))
    # The round's best (the seed, or its control) is the parallel phase's serial network.
    history.append((Decision(TrialKind.PARALLEL_SEED, arch, zeros, parent=serial_best), 30.0))
    baseline = best = len(history) - 1
    best_value = 30.0
    if equal:
        history.append((Decision(TrialKind.CONTROL, arch, zeros, parent=baseline, round=1), 30.5))
        best, best_value = len(history) - 1, 30.5
    counts = range(config.space.max_subnets + 1)
    codes = [c for c in itertools.product(counts, repeat=arch.num_stages) if any(c)]
    for subnets in rng.sample(codes, max(0, n - len(history))):
        code = ParallelCode(subnets)
        value = best_value + rng.uniform(-2.0, 0.3)
        parent = baseline if equal else best
        history.append((Decision(TrialKind.PARALLEL, arch, code, parent=parent, round=1), value))
        if value > best_value:
            best, best_value = len(history) - 1, value
    return _frozen(config, history)


def plain_history(n: int, seed: int = 0) -> list[FrozenTrial]:
    rng = random.Random(seed)
    distribution = FloatDistribution(0.0, 1.0)
    return [
        optuna.trial.create_trial(
            params={"x": (x := rng.random())}, distributions={"x": distribution}, value=x
        )
        for _ in range(n)
    ]


class _TimedSampler(SPNASSampler):
    """The SPNASSampler, timing its ``before_trial`` (where the decision is made) and the
    storage calls made inside it (:func:`_time_storage_calls`)."""

    decision_seconds: list[float]
    storage_seconds: list[float]
    deciding: bool = False

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.storage_seconds.append(0.0)
        self.deciding = True
        started = time.perf_counter()
        try:
            super().before_trial(study, trial)
        finally:
            self.decision_seconds.append(time.perf_counter() - started)
            self.deciding = False


def _time_storage_calls(storage: Any, sampler: _TimedSampler) -> None:
    """Add the time of ``storage``'s :data:`STORAGE_CALLS` made while ``sampler`` decides to
    its last ``storage_seconds``."""

    def timed(call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sampler.deciding:
                return call(*args, **kwargs)
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                sampler.storage_seconds[-1] += time.perf_counter() - started

        return wrapper

    for name in STORAGE_CALLS:
        setattr(storage, name, timed(getattr(storage, name)))


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def measure_spnas(
    config: SearchConfig, url: str, n: int, measure: int, kind: TrialKind = TrialKind.SERIAL
) -> dict[str, float]:
    """Ask + tell ``measure`` trials of ``kind`` after a history of ``n`` trials."""
    study = create_search_study(config, url)
    history = (serial_history if kind == TrialKind.SERIAL else parallel_history)(config, n)
    state = SearchState.from_trials(history, config)
    if state.next_kind != kind:
        raise RuntimeError(
            f"the {kind} history of {n} trials ({config.search.comparison}) is not what the "
            f"search writes: replayed, it asks for {state.next_kind!r} in phase "
            f"{state.phase!r} ({state.waiting_for or state.reason or 'no reason given'})"
        )
    study.add_trials(history)
    sampler = _TimedSampler(config)
    sampler.decision_seconds, sampler.storage_seconds = [], []
    study = optuna.load_study(
        study_name=config.study.name, storage=make_storage(url), sampler=sampler
    )
    # The storage the sampler calls: Optuna's cache in front of an RDB storage.
    _time_storage_calls(study._storage, sampler)
    totals = []
    for _ in range(measure):
        started = time.perf_counter()
        trial = study.ask()
        decision = Decision.of(study._storage.get_trial(trial._trial_id))
        if decision is None or decision.kind != kind:
            raise RuntimeError(f"asked for a {kind} trial, the sampler decided {decision}")
        study.tell(trial, 10.0)  # worse than the best: the round (or phase) goes on
        totals.append(time.perf_counter() - started)
    own = [d - s for d, s in zip(sampler.decision_seconds, sampler.storage_seconds, strict=True)]
    return {
        "sampler_ms_per_trial": _median_ms(totals),
        "decision_ms": _median_ms(sampler.decision_seconds),
        "decision_ms_max": 1000.0 * max(sampler.decision_seconds),
        "decision_storage_ms": _median_ms(sampler.storage_seconds),
        "decision_compute_ms": _median_ms(own),
    }


def measure_random(url: str, name: str, n: int, measure: int) -> float:
    study = optuna.create_study(
        study_name=name, storage=make_storage(url), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.add_trials(plain_history(n))
    totals = []
    for _ in range(measure):
        started = time.perf_counter()
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, 0.5)
        totals.append(time.perf_counter() - started)
    return _median_ms(totals)


def measure_artifacts(root: Path, repeats: int = 3) -> dict[str, float]:
    """Upload and download of a ResNet-50 SPNet Faster R-CNN state dict (file-system store)."""
    import torch
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

    from spnas.arch import RESNET50
    from spnas.engines import ModelSpec
    from spnas.engines.torchvision import TorchvisionEngine

    model = TorchvisionEngine().build_model(ModelSpec(RESNET50, num_classes=80))
    weights = root / "model_final.pth"
    torch.save(model.state_dict(), weights)
    del model
    store = FileSystemArtifactStore(str(root / "store"))
    (root / "store").mkdir(exist_ok=True)
    study = optuna.create_study(storage=make_storage(f"sqlite:///{root / 'artifacts.db'}"))
    trial = study.ask()
    up, down = [], []
    for index in range(repeats):
        started = time.perf_counter()
        artifact_id = upload_artifact(
            artifact_store=store, file_path=str(weights), study_or_trial=trial
        )
        up.append(time.perf_counter() - started)
        started = time.perf_counter()
        download_artifact(
            artifact_store=store, artifact_id=artifact_id, file_path=str(root / f"down{index}.pth")
        )
        down.append(time.perf_counter() - started)
        (root / f"down{index}.pth").unlink()
    return {
        "state_dict_mb": weights.stat().st_size / 2**20,
        "upload_ms": _median_ms(up),
        "download_ms": _median_ms(down),
    }


@contextlib.contextmanager
def storage_urls(kind: str, root: Path) -> Iterator[Any]:
    """A function ``name → URL`` of a fresh database of ``kind``."""
    if kind == "sqlite":
        yield lambda name: f"sqlite:///{root / f'{name}.db'}"
        return
    from spnas.testing import LocalPostgres

    with LocalPostgres() as server:
        yield server.new_database


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--storage", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--measure", type=int, default=20, help="trials timed per study")
    parser.add_argument(
        "--comparison",
        choices=["equal_training", "greedy"],
        default=SearchSection().comparison,
        help="search.comparison of the SP-NAS studies (default: the search's)",
    )
    parser.add_argument(
        "--artifact-repeats", type=int, default=3, help="uploads and downloads timed"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("spnas").setLevel(logging.WARNING)

    rows = []
    with tempfile.TemporaryDirectory(prefix="spnas-overhead-") as tmp:
        root = Path(tmp)
        with storage_urls(args.storage, root) as url_of:
            for n in args.trials:
                url = url_of(f"spnas_{n}")
                config = study_config(root, f"spnas-{n}", url, comparison=args.comparison)
                spnas = measure_spnas(config, url, n, args.measure)
                url = url_of(f"parallel_{n}")
                config = study_config(
                    root, f"parallel-{n}", url, phase="parallel", comparison=args.comparison
                )
                parallel = measure_spnas(config, url, n, args.measure, kind=TrialKind.PARALLEL)
                random_ms = measure_random(url_of(f"random_{n}"), f"random-{n}", n, args.measure)
                row = {
                    "trials_in_history": n,
                    **spnas,
                    "parallel_sampler_ms_per_trial": parallel["sampler_ms_per_trial"],
                    "parallel_decision_ms": parallel["decision_ms"],
                    "parallel_decision_ms_max": parallel["decision_ms_max"],
                    "parallel_decision_storage_ms": parallel["decision_storage_ms"],
                    "parallel_decision_compute_ms": parallel["decision_compute_ms"],
                    "parallel_to_serial": parallel["decision_ms"] / spnas["decision_ms"],
                    "random_sampler_ms_per_trial": random_ms,
                    "ratio": spnas["sampler_ms_per_trial"] / random_ms,
                }
                rows.append(row)
                print(
                    f"N={n}: SPNASSampler {row['sampler_ms_per_trial']:.1f} ms/trial "
                    f"(decision {row['decision_ms']:.1f} ms serial, of which storage "
                    f"{row['decision_storage_ms']:.1f} ms, "
                    f"{row['parallel_decision_ms']:.1f} ms parallel: "
                    f"×{row['parallel_to_serial']:.2f}), RandomSampler "
                    f"{random_ms:.1f} ms/trial, ratio {row['ratio']:.1f}",
                    flush=True,
                )
        artifacts = measure_artifacts(root, args.artifact_repeats)
    at = next((r for r in rows if r["trials_in_history"] == TARGET_AT), None)
    result = {
        "storage": args.storage,
        "comparison": args.comparison,
        "measured_trials_per_study": args.measure,
        "rows": rows,
        "artifact": artifacts,
        "targets": {
            "at_trials": TARGET_AT,
            "ratio": TARGET_RATIO,
            "decision_ms": TARGET_DECISION_MS,
            "parallel_to_serial": TARGET_PARALLEL_RATIO,
        },
        # None: the run had no row at TARGET_AT trials.
        "meets_ratio_target": None if at is None else at["ratio"] <= TARGET_RATIO,
        "meets_decision_target": (
            None
            if at is None
            else max(at["decision_ms"], at["parallel_decision_ms"]) <= TARGET_DECISION_MS
        ),
        "meets_parallel_target": all(
            r["parallel_to_serial"] <= TARGET_PARALLEL_RATIO for r in rows
        ),
        # The headline figures, at TARGET_AT trials in history.
        **(
            {}
            if at is None
            else {
                key: at[key]
                for key in (
                    "sampler_ms_per_trial",
                    "random_sampler_ms_per_trial",
                    "ratio",
                    "decision_ms",
                    "decision_storage_ms",
                    "decision_compute_ms",
                )
            }
        ),
    }
    report(f"{NAME}_{args.storage}", result, args)


if __name__ == "__main__":
    main()
