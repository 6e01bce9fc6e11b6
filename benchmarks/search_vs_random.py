"""SP-NAS against random search at equal training seconds, with paired intervals (Table 9).

For each benchmark profile (``spnas data synth --profile``), first the profile's baselines,
then ``--seeds`` searches (search ``k`` = 0, 1, …):

- **Baselines**, retrained once per profile: the seed ``BB(11,d1,d1,d1)``; the hand-made
  high-resolution network ``BB(11d,1d,1d,1)`` of ``benchmarks/profiles.py`` (the reference at
  about the GMACs of the searches' picks: it costs 1.75× the seed, their picks 1.5–2.2× in
  earlier runs; every network's GMACs are in the results); and the **unselected-random**
  baseline: ``--unselected`` architectures drawn from the search space by the same rule as
  random search (serial code uniform, parallel code by the search's FLOPs-inverse sampling
  under its FLOPs budget), never selected by any search value; its value per seed is their
  mean. If selection adds nothing, a pick retrains like this mean.
- **SP-NAS**: a whole search (``spnas search`` with one worker on the profile's
  study YAML, ``studies/bench-*.yaml``) at equal training, verification off; search ``k``
  runs with ``search.seed = schedule.seed = k``. Its study (SQLite) is kept in
  ``benchmarks/results/<run-name>/spnas-<profile>-<k>.db`` (with the study YAML and the
  search's log), so that its trajectory can be audited (``spnas status``, the dashboard).
- **Random search** at the same budget: codes drawn as for the unselected baseline, each
  pretrained from scratch and trained one search schedule (:func:`spnas.search.retrain`,
  seed ``k``) one after the other, until the next one would exceed the budget;
  its pick is the best by that search value. Every candidate is listed in the results.
- **Verification**: both picks are retrained from scratch with the verification schedule,
  with the same ``--verify-seeds`` seeds as the baselines.

**Budget: CPU seconds of every trial, measured.** SP-NAS is charged the CPU seconds (``cpu_s``,
:mod:`spnas.search._cost`) of every trial that trained: the seed, controls and their noise
repeats, candidates, re-evaluations, reignitions and the parallel phase, including the crop
pretraining done inside the seed and reignition trials, weight transfers and the evaluation;
a pruned or diverged trial too. Random search is charged the CPU seconds of each candidate
(crop pretraining, detection training, evaluation). Measured, not optimizer steps nor FLOPs ×
iterations: a crop-pretraining step at 32 px costs a fraction of a detection step (random
search was charged 438 steps a candidate for about 1.1× a search trial's time), and the
backbone's FLOPs (what :mod:`spnas.modeling.flops` counts) leave out the detector's FPN, RPN
and box head, which dominate a detection step at these widths. CPU seconds rather than wall
seconds: other load on the machine (or a run stopped and resumed) stretches a trial's wall
time, not its work, and the two methods do not run at the same time, so wall seconds would
charge them whatever else ran then. Both run one trial at a time (the SP-NAS search with one
worker) with the same torch thread count; both sides' wall seconds are in the results too. A
trial whose worker was killed (an interrupted run) records no CPU seconds and is not charged;
its retry is, and such trials are listed (``uncharged_trials``).

**Resuming.** The result file is written after every retrain, random candidate and search.
``--resume`` (with the first run's ``--workdir``, which holds the data the studies were
created with, and the same settings) goes on with it: the retrains measured are not repeated
(a retrain is deterministic for its seed and thread count), random search continues after
its last candidate, and an unfinished SP-NAS study is resumed by ``spnas search``.

**Seeds.** Every seed used during either search is below ``VERIFY_SEED_BASE`` (1000); the
verification seeds are ``1000 + j`` (``_paired.verification_seeds``). The seeds a search
actually used (each trial's recorded training seed and ``search.seed``; random search's
``k``) are in the results, and the script stops if one of them is a verification seed.

**Statistics.** Per profile, search and comparison, the differences seed by seed (both
networks retrained with the same verification seed) and their paired *t* 95 % interval
(:func:`spnas.search.paired_interval`, the interval of ``spnas status`` and ``spnas verify``),
and the same pooled over the searches (``_paired.pooled``).

Results (``benchmarks/results/search_vs_random.json``, or ``--out``; rewritten after every
search, so a partial run keeps what it measured): ``settings`` (``searches``,
``verify_seeds``, ``unselected``, ``budget`` = ``"trial_cpu_seconds"``,
``overrides``, ``torch_threads``, ``run_dir``, ``workdir``); ``retrains`` (per profile and
network, the AP per verification seed: what ``--resume`` reuses); ``profiles.<profile>``:

- ``verify_seeds``; ``seed``, ``high_res``: a network (``arch``, ``parallel``, ``gmacs``,
  ``retrained``: the AP per verification seed); ``unselected``: ``networks`` (networks as
  above), ``mean_per_seed``, ``mean``;
- ``per_search``: one row per search: ``search`` (``k``), ``spnas`` (a network plus
  ``search_ap``, ``trials``, ``budget_cpu_seconds``, ``wall_seconds``, ``uncharged_trials``,
  ``seeds_used``, ``study``: the path of its SQLite file), ``random`` (a network plus
  ``search_ap``, ``trained``, ``budget_cpu_seconds``, ``wall_seconds``,
  ``seeds_used``, ``candidates``: each with ``arch``, ``parallel``, ``search_ap``,
  ``cpu_seconds``, ``seconds``), ``budget_ratio`` (random's budget / SP-NAS's),
  ``gmacs_over_high_res`` (``spnas``,
  ``random``: each pick's GMACs over the high-resolution network's) and ``paired``;
- ``paired.<comparison>`` for the comparisons ``spnas_minus_random``, ``spnas_minus_seed``,
  ``spnas_minus_unselected``, ``spnas_minus_high_res``, ``random_minus_unselected``,
  ``random_minus_seed``: ``differences`` (one per verification seed), ``n``, ``mean``,
  ``ci95`` (``[low, high]``, or ``null`` under two seeds), ``above_zero`` (the whole interval
  above zero);
- ``pooled.<comparison>``: ``searches``; ``over_searches``: each search's mean difference,
  one value a search, with its interval — the verdict on the method, search-to-search
  variation included; ``over_seeds``: per seed, the mean over searches, with its interval —
  these searches held fixed. Both have the keys of a ``paired`` entry.

Then the data-specificity check (paper Fig. 4b, ``cross_profile``): the first search's SP-NAS
pick of each profile retrained on the other profile(s) with the verification seeds, and
``native_minus_other``, the paired difference to the native pick there.

``--cross-from FILE…`` runs that check alone on the first picks of earlier result files and
writes ``results/search_vs_random-cross.json``; their native picks' APs pair with this run's
only if they were verified with the same seeds, so a file verified with other seeds (every
file from before the disjoint seeds: they used seeds 0–2) is refused. ``--picks-from FILE…``
runs no search: it retrains the seed, the baselines and both picks of every search in those
files with this run's verification seeds and schedule, and writes
``results/search_vs_random-reverified.json`` (or ``--out``). Earlier files record no seeds
used (``seeds_used``); their searches trained with their search seed (0–2),
``schedule.seed`` 0 plus a repeat and verified with seeds 0–2, all below 1000, so their picks
can be verified again on disjoint seeds. Their budgets, however, were optimizer steps (a
candidate's crop pretraining charged like detection steps): such a profile is marked
``budget: "optimizer_steps"`` (with the ``overrides`` it was retrained with) and its
SP-NAS − random comparison carries that bias.

Run (hours; on a quiet machine): ``.venv/bin/python benchmarks/search_vs_random.py
[--profiles A B] [--seeds 3] [--verify-seeds 5] [--unselected 5]
[--run-name NAME] [--workdir DIR [--resume]] [--set KEY=VALUE…] [--cross-from FILE…]
[--picks-from FILE…] [--json]``.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, add_set_argument, base_parser, report, write_result
from _paired import VERIFY_SEED_BASE, check_disjoint, paired, pooled, verification_seeds
from profiles import NETS, PROFILES

from spnas.arch import SearchSpace, SerialCode
from spnas.search import (
    SearchConfig,
    SearchState,
    load_search_study,
    retrain,
    sample_parallel_code,
)
from spnas.search._config import apply_override
from spnas.search._cost import CPU_SECONDS_ATTR, cpu_seconds
from spnas.search._proposals import flops_budget, stage_costs

NAME = "search_vs_random"
SEED_ARCH = NETS["seed"]
HIGH_RES_ARCH = NETS["high-res"]
ROOT = Path(__file__).resolve().parents[1]

#: The comparisons made per search: (key, left network, right network), as ``left − right``.
COMPARISONS = (
    ("spnas_minus_random", "spnas", "random"),
    ("spnas_minus_seed", "spnas", "seed"),
    ("spnas_minus_unselected", "spnas", "unselected"),
    ("spnas_minus_high_res", "spnas", "high_res"),
    ("random_minus_unselected", "random", "unselected"),
    ("random_minus_seed", "random", "seed"),
)
#: Seeds an earlier result file's searches may have used, when the file does not list them.
OLD_SEEDS = range(VERIFY_SEED_BASE)


def study_values(
    root: Path,
    profile: str,
    seed: int,
    overrides: list[str] | tuple[str, ...] = (),
    storage: Path | None = None,
) -> dict[str, Any]:
    """The profile's study YAML (``studies/bench-*.yaml``) with ``overrides`` (``--set``),
    its work files under ``root``, its study in ``storage`` (default ``root/studies.db``);
    search and trial seeds ``seed``."""
    values = yaml.safe_load((ROOT / PROFILES[profile][0]).read_text(encoding="utf-8"))
    for item in overrides:
        apply_override(values, item)
    name = f"spnas-{profile}-{seed}"
    values["study"] = {
        "name": name,
        "storage": f"sqlite:///{storage or root / 'studies.db'}",
        "workdir": str(root / name),
    }
    values["engine"] = {
        **values["engine"],
        "config": str((ROOT / "studies" / values["engine"]["config"]).resolve()),
        "show_progress": False,
    }
    values["data"] = {**values["data"], "dir": str(root / f"data-{profile}")}
    values["search"] = {**values.get("search", {}), "seed": seed, "comparison": "equal_training"}
    # Search k trains with seeds k + repeat: the searches are independent replicas.
    values["schedule"] = {**values["schedule"], "seed": seed}
    values["verify"] = {**values.get("verify", {}), "enabled": False}
    return values


def profile_config(
    root: Path, profile: str, overrides: list[str] | tuple[str, ...]
) -> SearchConfig:
    """The profile's configuration, its data set generated under ``root``."""
    from spnas.search import prepare_data

    config = SearchConfig.from_dict(study_values(root, profile, 0, overrides))
    prepare_data(config)
    return config


def gmacs(config: SearchConfig, arch: Any, parallel: Any) -> float:
    """The backbone's GMACs at the search's input size."""
    from spnas.modeling.flops import cost

    size = (config.schedule.min_size, config.schedule.min_size)
    return cost(arch, parallel, base_width=config.model.width, input_size=size).gmacs


def random_code(space: SearchSpace, doublings: int, rng: random.Random) -> SerialCode:
    """A code drawn uniformly: stage count, block count, stage lengths, doubling positions."""
    while True:
        stages = rng.randint(space.min_stages, space.max_stages)
        blocks = rng.randint(max(space.min_blocks, stages), space.max_blocks)
        cuts = sorted(rng.sample(range(1, blocks), stages - 1))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, blocks], strict=True)]
        chars = ["1"] * blocks
        for position in rng.sample(range(1, blocks), doublings):  # never the very first block
            chars[position] = "d"
        groups, start = [], 0
        for length in lengths:
            groups.append("".join(chars[start : start + length]))
            start += length
        code = SerialCode.parse(f"{SEED_ARCH[:2]}({','.join(groups)})")
        if space.contains(code):
            return code


def random_parallel(config: SearchConfig, arch: SerialCode, rng: random.Random) -> Any:
    """A parallel code by the search's own FLOPs-inverse sampling, under its FLOPs budget."""
    costs, budget = stage_costs(config, arch), flops_budget(config, arch)
    for _ in range(config.parallel.max_tries):
        code = sample_parallel_code(arch, costs, config.space.max_subnets, rng)
        if gmacs(config, arch, code) <= budget:
            return code
    return None


def random_network(config: SearchConfig, rng: random.Random) -> tuple[str, str | None]:
    """A network of the search space (serial and parallel code), drawn as random search draws."""
    arch = random_code(config.space, SEED_ARCH.count("d"), rng)
    parallel = random_parallel(config, arch, rng)
    return str(arch), None if parallel is None else str(parallel)


def run_spnas(run_dir: Path, values: dict[str, Any]) -> tuple[SearchConfig, optuna.Study]:
    """Run the search with ``spnas search`` (as a user would); its config and study. The study
    YAML and the search's log go to ``run_dir`` beside the study."""
    path = run_dir / f"{values['study']['name']}.yaml"
    path.write_text(yaml.safe_dump(values))
    log = run_dir / f"{values['study']['name']}.log"
    with open(log, "a") as out:  # a resumed search's log follows the first attempt's
        subprocess.run(
            [sys.executable, "-m", "spnas", "search", str(path), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    study, config = load_search_study(values["study"]["name"], values["study"]["storage"])
    return config, study


def trained_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that trained a network (the objective records their ``kind``; a worker
    told to wait records none), finished or not, with both timestamps."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if "kind" in t.user_attrs and t.datetime_start and t.datetime_complete
    ]


def search_budget(study: optuna.Study) -> dict[str, Any]:
    """SP-NAS's budget: the CPU seconds of every trial that trained (``cpu_s``, recorded by
    the objective whatever the outcome), their wall seconds, and the trials that recorded none
    (a worker killed mid-trial, e.g. by an interrupted run, whose retry is charged instead)."""
    trials = trained_trials(study)
    return {
        "budget_cpu_seconds": sum(t.user_attrs.get(CPU_SECONDS_ATTR, 0.0) for t in trials),
        "wall_seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if CPU_SECONDS_ATTR in t.user_attrs
        ),
        "uncharged_trials": [t.number for t in trials if CPU_SECONDS_ATTR not in t.user_attrs],
    }


def search_seeds(study: optuna.Study, config: SearchConfig) -> list[int]:
    """Every seed the search trained with: each trial's and the pretraining's."""
    seeds = {config.search.seed}
    seeds.update(t.user_attrs["seed"] for t in trained_trials(study) if "seed" in t.user_attrs)
    return sorted(seeds)


class Progress:
    """The run's result, written to its file after every retrain, random candidate and search,
    so that ``--resume`` repeats at most the piece of work an interruption stopped."""

    def __init__(self, result: dict[str, Any], out: Path) -> None:
        self.result, self.out = result, out

    def retrains(self, profile: str, arch: Any, parallel: Any) -> dict[str, float]:
        """The APs of one network retrained on ``profile`` so far, per seed (a JSON key)."""
        code = str(arch) + ("" if parallel is None else f" {parallel}")
        runs = self.result.setdefault("retrains", {}).setdefault(profile, {})
        return runs.setdefault(code, {})

    def save(self) -> None:
        write_result(NAME, self.result, self.out)


def retrained(
    config: SearchConfig,
    profile: str,
    arch: Any,
    parallel: Any,
    seeds: list[int],
    out: Path,
    progress: Progress,
) -> dict[str, Any]:
    """The network retrained from scratch on ``profile`` (``config``'s data) with the
    verification schedule, one AP per seed; a seed retrained before (``progress``) is not
    retrained again: a retrain is deterministic for its seed and thread count."""
    done = progress.retrains(profile, arch, parallel)
    for seed in seeds:
        if str(seed) in done:
            continue
        try:
            result = retrain(
                config,
                arch,
                parallel,
                seed=seed,
                out_dir=out / f"s{seed}",
                schedule=config.verify_schedule,
            )
            done[str(seed)] = result.detection.metric(config.data.metric)
        except FloatingPointError:  # a diverged training found nothing
            done[str(seed)] = 0.0
        progress.save()
    return {
        "arch": str(arch),
        "parallel": None if parallel is None else str(parallel),
        "gmacs": gmacs(config, arch, parallel),
        "retrained": [done[str(seed)] for seed in seeds],
    }


def baselines(
    config: SearchConfig,
    profile: str,
    seeds: list[int],
    unselected: int,
    out: Path,
    progress: Progress,
) -> dict[str, Any]:
    """The seed, the high-resolution network and the unselected-random mean, retrained."""
    rng = random.Random(f"unselected:{profile}")
    networks = [
        retrained(config, profile, *random_network(config, rng), seeds, out / f"u{i}", progress)
        for i in range(unselected)
    ]
    per_seed = [statistics.fmean(n["retrained"][j] for n in networks) for j in range(len(seeds))]
    return {
        "seed": retrained(config, profile, SEED_ARCH, None, seeds, out / "seed", progress),
        "high_res": retrained(
            config, profile, HIGH_RES_ARCH, None, seeds, out / "high-res", progress
        ),
        "unselected": {
            "networks": networks,
            "mean_per_seed": per_seed,
            "mean": statistics.fmean(per_seed),
        },
    }


def train_candidate(
    config: SearchConfig, arch: str, parallel: str | None, seed: int, out: Path
) -> dict[str, Any]:
    """One random-search candidate trained as a search trial (crop pretraining, detection,
    evaluation): its value, CPU seconds (as a search trial's ``cpu_s``) and wall seconds."""
    started, cpu_started = time.monotonic(), cpu_seconds()
    try:
        result = retrain(config, arch, parallel, seed=seed, out_dir=out)
        value = result.detection.metric(config.data.metric)
    except FloatingPointError:
        value = 0.0
    return {
        "arch": arch,
        "parallel": parallel,
        "search_ap": value,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "seconds": time.monotonic() - started,
    }


def run_random(
    config: SearchConfig,
    budget: float,
    seed: int,
    out: Path,
    candidates: list[dict[str, Any]],
    save: Any,
) -> dict[str, Any]:
    """Random search until ``budget`` CPU seconds are spent: a candidate starts while the
    seconds spent plus the mean candidate's stay within the budget (the first always starts).
    ``candidates`` holds those trained before (``--resume``; the draws repeat them, so they are
    not trained again); each new one is appended and ``save`` called."""
    rng = random.Random(f"random:{seed}")
    for index in range(len(candidates)):
        drawn = random_network(config, rng)
        if drawn != (candidates[index]["arch"], candidates[index]["parallel"]):
            raise SystemExit(f"random search {seed}: candidate {index} is not the one drawn")

    def spent() -> float:
        return sum(c["cpu_seconds"] for c in candidates)

    while not candidates or spent() + spent() / len(candidates) <= budget:
        arch, parallel = random_network(config, rng)
        candidates.append(
            train_candidate(config, arch, parallel, seed, out / f"c{len(candidates)}")
        )
        save()
    best = max(candidates, key=lambda c: c["search_ap"])
    return {
        "arch": best["arch"],
        "parallel": best["parallel"],
        "search_ap": best["search_ap"],
        "trained": len(candidates),
        "budget_cpu_seconds": spent(),
        "wall_seconds": sum(c["seconds"] for c in candidates),
        "seeds_used": [seed],
        "candidates": candidates,
    }


def spnas_pick(config: SearchConfig, study: optuna.Study) -> dict[str, Any]:
    """The search's pick (its best SPNet, else its best SerialNet), budget and seeds."""
    state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
    best = state.best_parallel or state.round_best
    return {
        "arch": str(best.arch),
        "parallel": None if best.parallel is None else str(best.parallel),
        "search_ap": best.value,
        "trials": len(trained_trials(study)),
        **search_budget(study),
        "seeds_used": search_seeds(study, config),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["small-objects", "large-objects"])
    parser.add_argument("--seeds", type=int, default=3, help="searches per profile and method")
    parser.add_argument(
        "--verify-seeds",
        type=int,
        default=5,
        metavar="N",
        help=f"verification seeds {VERIFY_SEED_BASE}, {VERIFY_SEED_BASE + 1}, … (at least 2)",
    )
    parser.add_argument(
        "--unselected", type=int, default=5, help="random networks of the unselected baseline"
    )
    parser.add_argument(
        "--run-name",
        default=None,
        help="the studies go to <results>/<run-name>/ (default: the result file's name)",
    )
    add_set_argument(parser, "schedule.iters=100")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the data, weights and work files here (default: a temporary directory)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run of the result file (same settings and --workdir): its "
        "retrains, random candidates, searches and studies are reused",
    )
    parser.add_argument(
        "--cross-from",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="only the Fig. 4b check, on the first picks of these result files",
    )
    parser.add_argument(
        "--picks-from",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="no search: retrain the baselines and the picks of these result files with this "
        "run's verification seeds and schedule, then Fig. 4b",
    )
    args = parser.parse_args()
    try:
        args.verify_seeds = verification_seeds(args.verify_seeds)
    except ValueError as exc:
        parser.error(f"--verify-seeds: {exc}")
    if args.unselected < 1:
        parser.error(f"--unselected {args.unselected}: expected 1 or more networks")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    if args.cross_from:
        cross_only(args)
    elif args.picks_from:
        reverify(args)
    else:
        search(args)


def run_directory(args: Any) -> Path:
    """``<results>/<run-name>/``: where the run's studies are kept; new, unless resumed."""
    run_dir = args.out.parent / (args.run_name or args.out.stem)
    if run_dir.exists() and any(run_dir.iterdir()) and not args.resume:
        raise SystemExit(
            f"{run_dir} is not empty: the studies of an earlier run are kept there; pass "
            f"--resume (with its --workdir) to go on with it, another --run-name (or --out), "
            f"or move it away"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _settings(args: Any, **extra: Any) -> dict[str, Any]:
    import torch

    return {
        "verify_seeds": args.verify_seeds,
        "unselected": args.unselected,
        "overrides": args.overrides,
        # A retrain is deterministic for its seed on one thread count (reductions split
        # across threads differently): a resumed run reuses retrains only at the same count.
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def resumed(args: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """A new result, or with ``--resume`` the result file's, when it ran with ``settings``
    (the number of searches may grow)."""
    fresh: dict[str, Any] = {
        "complete": False,
        "settings": settings,
        "profiles": {},
        "cross_profile": [],
        "retrains": {},
        "wall_s": 0.0,
    }
    if not args.resume or not args.out.is_file():
        return fresh
    earlier = json.loads(args.out.read_text())
    same = {k: v for k, v in earlier.get("settings", {}).items() if k != "searches"}
    if same != {k: v for k, v in settings.items() if k != "searches"}:
        raise SystemExit(
            f"{args.out}: ran with other settings ({earlier.get('settings')}, now {settings}): "
            "resume it with its own, or start a new --run-name"
        )
    earlier.update(complete=False, settings=settings, cross_profile=[])
    return earlier


def search(args: Any) -> None:
    """Baselines, then per search: SP-NAS, random search at its CPU seconds, both verified."""
    started = time.monotonic()
    if args.resume and args.workdir is None:
        raise SystemExit("--resume needs the --workdir of the run it resumes (its studies' data)")
    args.out = args.out or RESULTS / f"{NAME}.json"
    run_dir = run_directory(args)
    seeds = args.verify_seeds
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        settings = _settings(
            args,
            searches=args.seeds,
            budget="trial_cpu_seconds",
            run_dir=str(run_dir),
            workdir=str(root) if args.workdir else None,
        )
        result = resumed(args, settings)
        progress = Progress(result, args.out)
        earlier_wall = result["wall_s"]
        for profile in args.profiles:
            config = profile_config(root, profile, args.overrides)
            if profile not in result["profiles"]:
                result["profiles"][profile] = _profile_entry(config, profile, args, root, progress)
            entry = result["profiles"][profile]
            for k in range(args.seeds):
                if any(row["search"] == k for row in entry["per_search"]):
                    continue
                storage = run_dir / f"spnas-{profile}-{k}.db"
                values = study_values(root, profile, k, args.overrides, storage)
                config, study = run_spnas(run_dir, values)
                spnas = {**spnas_pick(config, study), "study": str(storage)}
                check_disjoint(seeds, spnas["seeds_used"], f"{profile} search {k} (SP-NAS)")
                candidates = entry.setdefault("random_in_progress", {}).setdefault(str(k), [])
                pick = run_random(
                    config,
                    spnas["budget_cpu_seconds"],
                    k,
                    root / f"r-{profile}-{k}",
                    candidates,
                    progress.save,
                )
                check_disjoint(seeds, pick["seeds_used"], f"{profile} search {k} (random)")
                _add_search(result, profile, config, k, spnas, pick, root, progress)
                del entry["random_in_progress"][str(k)]
                if not entry["random_in_progress"]:
                    del entry["random_in_progress"]
                result["wall_s"] = earlier_wall + time.monotonic() - started
                report(NAME, result, args)
        result["cross_profile"] = _cross_profile(
            result["profiles"], args.overrides, seeds, root, progress
        )
    result.update(complete=True, wall_s=earlier_wall + time.monotonic() - started)
    report(NAME, result, args)


def _profile_entry(
    config: SearchConfig, profile: str, args: Any, root: Path, progress: Progress
) -> dict[str, Any]:
    """A profile's results before its first search: its baselines."""
    base = baselines(
        config, profile, args.verify_seeds, args.unselected, root / f"b-{profile}", progress
    )
    print(
        f"{profile}: seed {statistics.fmean(base['seed']['retrained']):.2f}, high-res "
        f"{statistics.fmean(base['high_res']['retrained']):.2f}, unselected random "
        f"{base['unselected']['mean']:.2f} (mean of {args.unselected})",
        flush=True,
    )
    return {"verify_seeds": args.verify_seeds, **base, "per_search": [], "pooled": {}}


def _add_search(
    result: dict[str, Any],
    profile: str,
    config: SearchConfig,
    k: int,
    spnas: dict[str, Any],
    pick: dict[str, Any],
    root: Path,
    progress: Progress,
) -> None:
    """Verify both picks of search ``k``, add its row and the pooled summary, print it."""
    entry = result["profiles"][profile]
    seeds = entry["verify_seeds"]
    for method, tag in ((spnas, "s"), (pick, "p")):
        out = root / f"{tag}-{profile}-{k}"
        method.update(
            retrained(config, profile, method["arch"], method["parallel"], seeds, out, progress)
        )
    networks = {
        "spnas": spnas["retrained"],
        "random": pick["retrained"],
        "seed": entry["seed"]["retrained"],
        "high_res": entry["high_res"]["retrained"],
        "unselected": entry["unselected"]["mean_per_seed"],
    }
    row = {
        "search": k,
        "spnas": spnas,
        "random": pick,
        "budget_ratio": _budget_ratio(spnas, pick),
        # The high-resolution network is the equal-cost reference: how far from equal.
        "gmacs_over_high_res": {
            "spnas": spnas["gmacs"] / entry["high_res"]["gmacs"],
            "random": pick["gmacs"] / entry["high_res"]["gmacs"],
        },
        "paired": {
            key: paired(networks[left], networks[right]) for key, left, right in COMPARISONS
        },
    }
    entry["per_search"].append(row)
    entry["pooled"] = {
        key: pooled([r["paired"][key]["differences"] for r in entry["per_search"]])
        for key, _, _ in COMPARISONS
    }
    print(summary_line(profile, row), flush=True)


def _budget_ratio(spnas: dict[str, Any], pick: dict[str, Any]) -> float:
    """Random search's budget over SP-NAS's: CPU seconds, or in earlier files wall seconds
    or optimizer steps."""
    key = next(k for k in ("budget_cpu_seconds", "budget_seconds", "budget_steps") if k in spnas)
    return pick[key] / spnas[key]


def summary_line(profile: str, row: dict[str, Any]) -> str:
    """One search's picks and paired differences, for the log."""

    def interval(key: str) -> str:
        d = row["paired"][key]
        ci = "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        return f"{key} {d['mean']:+.2f} {ci}"

    spnas, pick = row["spnas"], row["random"]
    return (
        f"{profile} search {row['search']}: SP-NAS {spnas['arch']} {spnas['parallel']} "
        f"({spnas['trials']} trials), random {pick['arch']} {pick['parallel']} "
        f"({pick['trained']} candidates, {row['budget_ratio']:.2f}× the seconds); "
        + "; ".join(interval(key) for key, _, _ in COMPARISONS)
    )


def _earlier_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An earlier file's searches of one profile, as (search, SP-NAS pick, random pick) rows;
    files from before the disjoint seeds name them ``per_seed`` and ``seed``."""
    if "per_search" in entry:
        return entry["per_search"]
    return [{**row, "search": row["seed"]} for row in entry["per_seed"]]


def reverify(args: Any) -> None:
    """Retrain the picks of earlier runs (``--picks-from``) with this run's verification.

    The searches themselves do not depend on the verification (it is off inside them), so an
    earlier run's picks are what a new run would pick with the same budget rule, up to the
    order in which its workers finished trials; only the verification is measured again, on
    seeds disjoint from every seed those searches used. Budgets and search APs are the
    earlier run's.
    """
    started = time.monotonic()
    seeds = args.verify_seeds
    result: dict[str, Any] = {
        "complete": False,
        "settings": _settings(args),
        "from": [],
        "profiles": {},
        "cross_profile": [],
    }
    args.out = args.out or RESULTS / f"{NAME}-reverified.json"
    progress = Progress(result, args.out)
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = Path(tmp)
        for path in args.picks_from:
            earlier = json.loads(path.read_text())
            overrides = [*earlier["settings"]["overrides"], *args.overrides]
            result["from"].append({"file": path.name, "measured_at": earlier["measured_at"]})
            for profile, before in earlier["profiles"].items():
                config = profile_config(root, profile, overrides)
                entry = _profile_entry(config, profile, args, root, progress)
                entry["budget"] = earlier["settings"].get("budget", "optimizer_steps")
                entry["overrides"] = overrides
                result["profiles"][profile] = entry
                for row in _earlier_rows(before):
                    k = row["search"]
                    spnas, pick = dict(row["spnas"]), dict(row["random"])
                    for method, name in ((spnas, "SP-NAS"), (pick, "random")):
                        used = method.get("seeds_used", OLD_SEEDS)
                        check_disjoint(seeds, used, f"{path} {profile} search {k} ({name})")
                    _add_search(result, profile, config, k, spnas, pick, root, progress)
                    result["wall_s"] = time.monotonic() - started
                    report(NAME, result, args)
        result["cross_profile"] = _cross_profile(
            result["profiles"], args.overrides, seeds, root, progress
        )
    result.update(complete=True, wall_s=time.monotonic() - started)
    report(NAME, result, args)


def cross_only(args: Any) -> None:
    """The Fig. 4b check alone, on the picks of earlier runs (``--cross-from``)."""
    started = time.monotonic()
    seeds = args.verify_seeds
    result: dict[str, Any] = {"complete": False, "from": [], "cross_profile": []}
    args.out = args.out or RESULTS / f"{NAME}-cross.json"
    progress = Progress(result, args.out)
    profiles: dict[str, Any] = {}
    for path in args.cross_from:
        earlier = json.loads(path.read_text())
        verified = earlier["settings"].get("verify_seeds")
        if verified != seeds:
            raise SystemExit(
                f"{path}: verified with seeds {verified or 'from 0 (before disjoint seeds)'}, "
                f"not this run's {seeds}: its native picks' APs do not pair with this run's "
                f"retrains; verify its picks again with --picks-from {path}"
            )
        result["from"].append({"file": path.name, "measured_at": earlier["measured_at"]})
        for profile, entry in earlier["profiles"].items():
            profiles[profile] = {**entry, "overrides": earlier["settings"]["overrides"]}
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        result["cross_profile"] = _cross_profile(
            profiles, args.overrides, seeds, Path(tmp), progress
        )
    result.update(complete=True, wall_s=time.monotonic() - started)
    report(NAME, result, args)


def _cross_profile(
    profiles: dict[str, dict[str, Any]],
    overrides: list[str],
    seeds: list[int],
    root: Path,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Paper Fig. 4b: each profile's first SP-NAS pick retrained on every other profile.

    A profile's entry may carry its own ``overrides`` (an earlier file's), else ``overrides``.
    """
    rows = []
    for target, entry in profiles.items():
        if not entry["per_search"]:
            continue
        config = profile_config(root, target, entry.get("overrides", overrides))
        native = entry["per_search"][0]["spnas"]
        for source, other in profiles.items():
            if source == target or not other["per_search"]:
                continue
            pick = other["per_search"][0]["spnas"]
            out = root / f"x-{source}-{target}"
            net = retrained(config, target, pick["arch"], pick["parallel"], seeds, out, progress)
            rows.append(
                {
                    "searched_on": source,
                    "retrained_on": target,
                    **net,
                    "native_pick": {"arch": native["arch"], "parallel": native["parallel"]},
                    "native_minus_other": paired(native["retrained"], net["retrained"]),
                }
            )
    return rows


if __name__ == "__main__":
    main()
