"""SP-NAS against random search at equal budget, both picks retrained from scratch (Table 9).

For each benchmark profile (``spnas data synth --profile``) and each of ``--seeds`` seeds:

- **SP-NAS**: a whole search (``spnas search`` with 2 workers on the profile's study YAML,
  ``studies/bench-*.yaml``: seed, serial rounds with a reignition, parallel phase) at equal
  training (``search.comparison: equal_training``), no verification inside. Its budget is every optimizer step it took: each trial's detection
  iterations plus the classification pretraining of the seed and of every reignition.
- **Random search** at the same budget: codes drawn uniformly from the same space (serial code
  with the seed's number of doublings, then a parallel code by the same FLOPs-inverse sampling
  under the same FLOPs budget), each pretrained from scratch and trained one search schedule
  (:func:`spnas.search.retrain`), until the next one would exceed the budget; its pick is the
  best by that search value.
- **Both picks and the seed are retrained** from scratch with the verification schedule,
  ``--repeats`` seeds each (the same seeds for every network): the only difference between the
  three is the architecture.

Then the data-specificity check (paper Fig. 4b): SP-NAS's pick of each profile is retrained on
the other profile(s) with the same repeats. ``--cross-from FILE…`` runs that check alone, on
the seed-0 picks of earlier result files (one or more profiles each), and writes
``results/search_vs_random-cross.json``: a retrain is deterministic for its seed on one
machine, so the native picks' retrained APs in those files need not be measured again.
``--picks-from FILE…`` runs no search: it retrains the seed and both picks of every search in
those files with this run's verification schedule (the study YAMLs' 900 iterations, or
``--set verify.schedule.iters=N``), then Fig. 4b, and writes
``results/search_vs_random-reverified.json`` (or ``--out``). The searches run with
verification off, so their picks do not depend on its schedule.

Run: ``.venv/bin/python benchmarks/search_vs_random.py [--profiles A B] [--seeds 3]
[--repeats 3] [--cross-from FILE…] [--picks-from FILE…] [--json]``; it writes
``benchmarks/results/search_vs_random.json`` after every search, so a partial run keeps what
it measured.
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

from _common import RESULTS, add_set_argument, base_parser, report, spread
from profiles import PROFILES

from spnas.arch import SearchSpace, SerialCode
from spnas.search import SearchConfig, SearchState, load_search_study, retrain
from spnas.search._config import apply_override
from spnas.search._proposals import flops_budget, sample_parallel_code, stage_costs

NAME = "search_vs_random"
SEED_ARCH = "BB(11,d1,d1,d1)"
ROOT = Path(__file__).resolve().parents[1]


def study_values(
    root: Path, profile: str, seed: int, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """The profile's study YAML (``studies/bench-*.yaml``) with ``overrides`` (``--set``),
    its files under ``root``."""
    values = yaml.safe_load((ROOT / PROFILES[profile][0]).read_text(encoding="utf-8"))
    for item in overrides:
        apply_override(values, item)
    name = f"spnas-{profile}-{seed}"
    values["study"] = {
        "name": name,
        "storage": f"sqlite:///{root / 'studies.db'}",
        "workdir": str(root / name),
    }
    values["engine"] = {
        **values["engine"],
        "config": str((ROOT / "studies" / values["engine"]["config"]).resolve()),
        "show_progress": False,
    }
    values["data"] = {**values["data"], "dir": str(root / f"data-{profile}")}
    values["search"] = {**values.get("search", {}), "seed": seed, "comparison": "equal_training"}
    values["verify"] = {**values.get("verify", {}), "enabled": False}
    return values


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
    from spnas.modeling.flops import cost

    costs, budget = stage_costs(config, arch), flops_budget(config, arch)
    size = (config.schedule.min_size, config.schedule.min_size)
    for _ in range(config.parallel.max_tries):
        code = sample_parallel_code(arch, costs, config.space.max_subnets, rng)
        gmacs = cost(arch, code, base_width=config.model.width, input_size=size).gmacs
        if gmacs <= budget:
            return code
    return None


def run_spnas(root: Path, values: dict[str, Any], workers: int) -> tuple[SearchConfig, Any]:
    """Run the search with ``spnas search`` (as a user would); its config and final state."""
    path = root / f"{values['study']['name']}.yaml"
    path.write_text(yaml.safe_dump(values))
    log = root / f"{values['study']['name']}.log"
    with open(log, "w") as out:
        subprocess.run(
            [sys.executable, "-m", "spnas", "search", str(path), "--workers", str(workers)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    study, config = load_search_study(values["study"]["name"], values["study"]["storage"])
    return config, study


def search_budget(study: optuna.Study) -> int:
    """Optimizer steps of every trial: detection iterations and classification pretraining."""
    steps = 0
    for trial in study.get_trials(deepcopy=False):
        steps += int(trial.user_attrs.get("train_iters") or 0)
        steps += int(trial.user_attrs.get("pretrain_iters") or 0)
    return steps


def retrained(
    config: SearchConfig, arch: Any, parallel: Any, repeats: int, out: Path
) -> list[float | None]:
    """The network retrained from scratch with the verification schedule, one AP per seed."""
    values: list[float | None] = []
    for repeat in range(repeats):
        try:
            result = retrain(
                config,
                arch,
                parallel,
                seed=repeat,
                out_dir=out / f"r{repeat}",
                schedule=config.verify_schedule,
            )
            values.append(result.detection.metric(config.data.metric))
        except FloatingPointError:  # a diverged training found nothing
            values.append(0.0)
    return values


def run_random(
    config: SearchConfig, budget: int, seed: int, out: Path
) -> tuple[dict[str, Any], int, int]:
    """Random search until the budget is spent: its pick, steps spent, candidates trained."""
    rng = random.Random(f"random:{seed}")
    doublings = str(SerialCode.parse(SEED_ARCH)).count("d")
    spent, trained, best = 0, 0, None
    cost_estimate = 0
    while spent + cost_estimate <= budget:
        arch = random_code(config.space, doublings, rng)
        parallel = random_parallel(config, arch, rng)
        try:
            result = retrain(config, arch, parallel, seed=seed, out_dir=out / f"c{trained}")
            value = result.detection.metric(config.data.metric)
            steps = result.iterations
        except FloatingPointError:
            value, steps = 0.0, cost_estimate
        spent += steps
        cost_estimate = max(cost_estimate, steps)
        trained += 1
        if best is None or value > best["search_ap"]:
            best = {"arch": str(arch), "parallel": None if parallel is None else str(parallel)}
            best["search_ap"] = value
    assert best is not None
    return best, spent, trained


def _mean(values: list[float | None]) -> float:
    return statistics.fmean(v for v in values if v is not None)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["small-objects", "large-objects"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of each SP-NAS search")
    add_set_argument(parser, "schedule.iters=100")
    parser.add_argument(
        "--cross-from",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="only the Fig. 4b check, on the seed-0 picks of these result files",
    )
    parser.add_argument(
        "--picks-from",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="no search: retrain the picks (and the seed) of these result files with this "
        "run's verification schedule (the study YAMLs' or --set verify.schedule.iters=N), then "
        "Fig. 4b",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    if args.cross_from:
        cross_only(args)
        return
    if args.picks_from:
        reverify(args)
        return
    started = time.monotonic()
    result: dict[str, Any] = {
        "complete": False,
        "settings": {"seeds": args.seeds, "repeats": args.repeats, "overrides": args.overrides},
        "profiles": {},
        "cross_profile": [],
    }
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = Path(tmp)
        picks: dict[str, list[tuple[SearchConfig, dict[str, Any]]]] = {}
        for profile in args.profiles:
            entry: dict[str, Any] = {"per_seed": []}
            result["profiles"][profile] = entry
            for seed in range(args.seeds):
                values = study_values(root, profile, seed, args.overrides)
                config, study = run_spnas(root, values, args.workers)
                if seed == 0:
                    entry["seed_retrained"] = retrained(
                        config, SEED_ARCH, None, args.repeats, root / f"seed-{profile}"
                    )
                state = SearchState.from_trials(study.get_trials(deepcopy=False), config)
                best = state.best_parallel or state.round_best
                budget = search_budget(study)
                spnas = {
                    "arch": str(best.arch),
                    "parallel": None if best.parallel is None else str(best.parallel),
                    "search_ap": best.value,
                    "trials": len(study.get_trials(deepcopy=False)),
                    "budget_steps": budget,
                }
                spnas["retrained"] = retrained(
                    config, best.arch, best.parallel, args.repeats, root / f"s-{profile}-{seed}"
                )
                pick, spent, trained = run_random(config, budget, seed, root / f"r{profile}{seed}")
                pick.update(budget_steps=spent, trained=trained)
                pick["retrained"] = retrained(
                    config, pick["arch"], pick["parallel"], args.repeats, root / f"p{profile}{seed}"
                )
                _add_search(result, profile, _row(seed, spnas, pick, entry["seed_retrained"]))
                picks.setdefault(profile, []).append((config, spnas))
                result["wall_s"] = time.monotonic() - started
                report(NAME, result, args)
        result["cross_profile"] = _cross_profile(picks, args.repeats, root)
    result.update(complete=True, wall_s=time.monotonic() - started)
    report(NAME, result, args)


def _add_search(result: dict[str, Any], profile: str, row: dict[str, Any]) -> None:
    """Add one search's row to ``result``'s profile, print it, and update the summary."""
    entry = result["profiles"][profile]
    entry["per_seed"].append(row)
    print(json_line(profile, row), flush=True)
    entry.update(_profile_summary(entry["per_seed"], entry["seed_retrained"]))


def reverify(args: Any) -> None:
    """Retrain the picks of earlier runs (``--picks-from``) with this run's verification schedule.

    The searches themselves do not depend on the verification schedule (it is off inside them),
    so an earlier run's picks are what a new run would pick, up to the order in which its two
    workers finish trials; only the verification is measured again. Budgets and search APs are
    the earlier run's.
    """
    from spnas.search._worker import prepare_data

    started = time.monotonic()
    result: dict[str, Any] = {
        "complete": False,
        "settings": {"repeats": args.repeats, "overrides": args.overrides},
        "from": [],
        "profiles": {},
        "cross_profile": [],
    }
    args.out = args.out or RESULTS / f"{NAME}-reverified.json"
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = Path(tmp)
        picks: dict[str, list[tuple[SearchConfig, dict[str, Any]]]] = {}
        for path in args.picks_from:
            earlier = json.loads(path.read_text())
            overrides = [*earlier["settings"]["overrides"], *args.overrides]
            result["from"].append({"file": path.name, "measured_at": earlier["measured_at"]})
            for profile, before in earlier["profiles"].items():
                config = SearchConfig.from_dict(study_values(root, profile, 0, overrides))
                prepare_data(config)
                entry: dict[str, Any] = {"per_seed": []}
                result["profiles"][profile] = entry
                entry["seed_retrained"] = retrained(
                    config, SEED_ARCH, None, args.repeats, root / f"seed-{profile}"
                )
                for row in before["per_seed"]:
                    spnas, pick = dict(row["spnas"]), dict(row["random"])
                    for method, out in ((spnas, "s"), (pick, "p")):
                        method["retrained"] = retrained(
                            config,
                            method["arch"],
                            method["parallel"],
                            args.repeats,
                            root / f"{out}-{profile}-{row['seed']}",
                        )
                    _add_search(
                        result, profile, _row(row["seed"], spnas, pick, entry["seed_retrained"])
                    )
                    picks.setdefault(profile, []).append((config, spnas))
                    result["wall_s"] = time.monotonic() - started
                    report(NAME, result, args)
        result["cross_profile"] = _cross_profile(picks, args.repeats, root)
    result.update(complete=True, wall_s=time.monotonic() - started)
    report(NAME, result, args)


def cross_only(args: Any) -> None:
    """The Fig. 4b check alone, on the picks of earlier runs (``--cross-from``)."""
    from spnas.search import SearchConfig
    from spnas.search._worker import prepare_data

    started = time.monotonic()
    result: dict[str, Any] = {"complete": False, "from": [], "cross_profile": []}
    args.out = args.out or RESULTS / f"{NAME}-cross.json"
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = Path(tmp)
        picks: dict[str, list[tuple[SearchConfig, dict[str, Any]]]] = {}
        for path in args.cross_from:
            earlier = json.loads(path.read_text())
            overrides = earlier["settings"]["overrides"]
            if earlier["settings"]["repeats"] != args.repeats:
                raise SystemExit(
                    f"{path}: repeats {earlier['settings']['repeats']}, not {args.repeats}"
                )
            result["from"].append({"file": path.name, "measured_at": earlier["measured_at"]})
            for profile, entry in earlier["profiles"].items():
                config = SearchConfig.from_dict(study_values(root, profile, 0, overrides))
                prepare_data(config)
                picks[profile] = [(config, entry["per_seed"][0]["spnas"])]
        result["cross_profile"] = _cross_profile(picks, args.repeats, root)
    result.update(complete=True, wall_s=time.monotonic() - started)
    report(NAME, result, args)


def _row(
    seed: int, spnas: dict[str, Any], pick: dict[str, Any], seed_values: list[float | None]
) -> dict[str, Any]:
    spnas_mean, random_mean = _mean(spnas["retrained"]), _mean(pick["retrained"])
    return {
        "seed": seed,
        "spnas": spnas,
        "random": pick,
        "spnas_retrained_mean": spnas_mean,
        "random_retrained_mean": random_mean,
        "seed_retrained_mean": _mean(seed_values),
        "spnas_beats_random": spnas_mean > random_mean,
    }


def _profile_summary(rows: list[dict[str, Any]], seed_values: list[float | None]) -> dict:
    seed_std = statistics.stdev(v for v in seed_values if v is not None)
    spnas = [r["spnas_retrained_mean"] for r in rows]
    gains = [m - _mean(seed_values) for m in spnas]
    return {
        "seed": spread([v for v in seed_values if v is not None]),
        "spnas_retrained": spread(spnas),
        "random_retrained": spread([r["random_retrained_mean"] for r in rows]),
        "spnas_gain_over_seed": spread(gains),
        "spnas_beats_seed_by_2_std": [g > 2 * seed_std for g in gains],
        "spnas_beats_random": [r["spnas_beats_random"] for r in rows],
    }


def _cross_profile(
    picks: dict[str, list[tuple[SearchConfig, dict[str, Any]]]], repeats: int, root: Path
) -> list[dict[str, Any]]:
    """Paper Fig. 4b: each profile's SP-NAS pick (seed 0) retrained on every other profile."""
    rows = []
    for source, searched in picks.items():
        _, pick = searched[0]
        for target, other in picks.items():
            if target == source:
                continue
            config = other[0][0]
            values = retrained(
                config, pick["arch"], pick["parallel"], repeats, root / f"x-{source}-{target}"
            )
            rows.append(
                {
                    "searched_on": source,
                    "retrained_on": target,
                    "arch": pick["arch"],
                    "parallel": pick["parallel"],
                    "retrained": values,
                    "mean": _mean(values),
                    "native_pick_mean": _mean(other[0][1]["retrained"]),
                }
            )
    return rows


def json_line(profile: str, row: dict[str, Any]) -> str:
    return (
        f"{profile} seed {row['seed']}: retrained seed {row['seed_retrained_mean']:.2f}, "
        f"SP-NAS {row['spnas_retrained_mean']:.2f} ({row['spnas']['arch']} "
        f"{row['spnas']['parallel']}, {row['spnas']['budget_steps']} steps), random "
        f"{row['random_retrained_mean']:.2f} ({row['random']['arch']} {row['random']['parallel']}, "
        f"{row['random']['trained']} candidates, {row['random']['budget_steps']} steps)"
    )


if __name__ == "__main__":
    main()
