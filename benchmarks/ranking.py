"""Does a search trial rank networks as retraining from scratch does? (paper Fig. 4a, measured)

For each trial length of ``--trial-iters`` (detection iterations of a search trial; default 150,
the benchmark studies', and 450):

1. **One search** on a benchmark profile (``studies/bench-*.yaml``, equal training,
   verification off), run in this process by one worker (:func:`spnas.search.run_worker`),
   with ``--candidates`` N trials in every serial round (``serial.max_trials`` and
   ``serial.n_stuck`` set to N, so that no round ends early).
2. **The networks**: every candidate and the control of one serial round (``--round``; by
   default the round with the most candidates) plus the best network of every serial round.
   A network's search value is what the search compared: its trial's value, or the mean of its
   trials when it trained more than once (the control's noise repeats, a would-be winner's
   re-evaluation).
3. **Retrained from scratch** (:func:`spnas.search.retrain`: crop pretraining from random
   weights, then the verification schedule, ``verify.schedule``: 900 iterations in the
   studies), ``--repeats`` seeds each, ``--seed-base`` + k (1000 + k by default: disjoint from
   every training seed of the searches, so that no retrain repeats a search trial's run). A
   retrain does not depend on the trial length, so a network both searches found is retrained
   once; a diverged retrain has no AP and is listed, not averaged in.
4. **Kendall τ-b** (:func:`spnas.search.kendall_tau`) between the search values and the mean
   retrained APs, with a bootstrap 95 % interval (``--bootstrap`` resamples of the networks,
   with replacement; percentiles), over all networks (``kendall_tau``) and over the round's
   own networks alone (``kendall_tau_round``: one baseline and equal training, the comparison
   the search makes; round bests of other rounds started from more training, so their values
   compare less well).

The target (issue 21) is τ ≥ 0.6 over ≥ 12 networks; ``enough_networks`` says whether a trial
length had 12. Run: ``.venv/bin/python benchmarks/ranking.py [--profile small-objects]
[--trial-iters 150 450] [--repeats 3] [--json]`` (``--set KEY=VALUE`` overrides a key of the
profile's study YAML, e.g. ``verify.schedule.iters=300``). Hours on a 2-core CPU: about 2 × 20
search trials and 3 retrains of 900 iterations for each of 15–25 networks. Results go to
``benchmarks/results/ranking.json`` (or ``--out``), rewritten after every retrained network;
``--workdir DIR`` keeps the studies, data and weights, and ``--resume`` (with the same
``--workdir``) reuses the finished searches there and the retrains already in the result file
and in ``--retrains-from FILE…`` (e.g. a run of another trial length in another process), when
they had the same profile, ``--set`` overrides, seeds, verification schedule and torch thread
count (``--candidates`` may differ): a retrain is deterministic for its seed and thread count
on one machine. Trial lengths run apart (one process or machine each, ``--out`` a file each)
join with ``--combine FILE…``: it checks that the files retrained alike on the same data,
measured different trial lengths, and agree on every retrain they share, then writes their
trial lengths and retrains into one result file (nothing is trained or recomputed).
"""

from __future__ import annotations

import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, add_set_argument, base_parser, write_result
from profiles import PROFILES, prepare_data, study_values

NAME = "ranking"
#: The issue's bar: fewer networks than this cannot tell τ = 0.6 from chance.
MIN_NETWORKS = 12


def search_overrides(candidates: int, overrides: list[str]) -> list[str]:
    """The ranking study's overrides: ``candidates`` trials per serial round (none ending
    early), no verification inside the search; the user's ``--set`` last, so they win."""
    return [
        f"serial.max_trials={candidates}",
        f"serial.n_stuck={candidates}",
        "verify.enabled=false",
        *overrides,
    ]


def study_config(root: Path, profile: str, iters: int, overrides: list[str]) -> Any:
    """The ranking study of ``iters``-iteration trials: the profile's study YAML with
    ``overrides``, its own storage and work directory under ``root``."""
    from spnas.search import SearchConfig

    values = study_values(profile, root, iters, overrides)
    name = f"ranking-{profile}-{iters}"
    values["study"] = {
        "name": name,
        "storage": f"sqlite:///{root / profile / f'{name}.db'}",
        "workdir": str(root / profile / name),
    }
    return SearchConfig.from_dict(values)


def run_search(config: Any) -> Any:
    """Run the search of ``config`` to its end in this process (a finished study is reused);
    its final :class:`~spnas.search.SearchState`."""
    from spnas.search import create_search_study, run_worker

    name = config.study.name

    def progress(_study: Any, trial: Any) -> None:
        print(f"{name}: trial {trial.number} {trial.state.name} {trial.value}", flush=True)

    create_search_study(config)
    state = run_worker(name, config.study.storage, callbacks=[progress])
    if state.phase != "done":
        raise SystemExit(f"search {name} ended {state.phase}: {state.reason}")
    return state


def round_networks(state: Any, round_: int) -> list[dict[str, Any]]:
    """Every candidate and the control of serial round ``round_`` with its search value (the
    mean of its finished trials), then the best of every serial round; each network once (its
    roles merged, its first search value kept)."""
    values: dict[tuple[str, str | None], dict[str, Any]] = {}
    for record in state.records:
        decision = record.decision
        if decision.round != round_ or decision.kind not in ("serial", "control"):
            continue
        if decision.kind == "control" and decision.parallel is not None:  # the parallel phase's
            continue
        if record.value is None:  # failed, pruned or diverged: no value to rank
            continue
        role = "control" if decision.kind == "control" else "candidate"
        entry = values.setdefault(
            decision.candidate, {"role": role, "trials": [], "trial_values": []}
        )
        entry["trials"].append(record.number)
        entry["trial_values"].append(record.value)
    networks = []
    for (arch, parallel), entry in values.items():
        networks.append(
            {
                "arch": arch,
                "parallel": parallel,
                "roles": [f"round {round_} {entry['role']}"],
                "in_round": True,
                "trials": entry["trials"],
                "search_value": statistics.fmean(entry["trial_values"]),
            }
        )
    for number, best in sorted(state.round_bests.items()):
        code = (str(best.arch), None if best.parallel is None else str(best.parallel))
        known = next((n for n in networks if (n["arch"], n["parallel"]) == code), None)
        if known is not None:
            known["roles"].append(f"round {number} best")
            continue
        networks.append(
            {
                "arch": code[0],
                "parallel": code[1],
                "roles": [f"round {number} best"],
                "in_round": False,
                "trials": [best.number],
                "search_value": best.value,
            }
        )
    return networks


def busiest_round(state: Any) -> int:
    """The serial round with the most distinct candidates (the first, on a tie)."""
    counts: dict[int, set[tuple[str, str | None]]] = {}
    for record in state.records:
        if record.decision.kind == "serial" and record.value is not None:
            counts.setdefault(record.decision.round, set()).add(record.decision.candidate)
    if not counts:
        raise SystemExit("the search finished no serial candidate: nothing to rank")
    return max(sorted(counts), key=lambda r: len(counts[r]))


def code_of(network: dict[str, Any]) -> str:
    return network["arch"] + (f" {network['parallel']}" if network["parallel"] else "")


def retrain_network(
    config: Any, network: dict[str, Any], seeds: list[int], root: Path, done: dict[str, Any]
) -> dict[str, Any]:
    """``network`` retrained from scratch with the verification schedule, one AP per seed;
    ``done`` (per seed, as a string: JSON keys) holds the retrains already measured."""
    from spnas.engines import TrialDiverged
    from spnas.search import retrain

    slug = re.sub(r"\W+", "_", code_of(network)).strip("_")
    for seed in seeds:
        if str(seed) in done:
            continue
        begun = time.monotonic()
        try:
            result = retrain(
                config,
                network["arch"],
                network["parallel"],
                seed=seed,
                out_dir=root / "retrain" / f"{slug}-{seed}",
                schedule=config.verify_schedule,
            )
            done[str(seed)] = {
                "ap": float(result.detection.metric(config.data.metric)),
                "seconds": time.monotonic() - begun,
            }
        except TrialDiverged as exc:
            done[str(seed)] = {"ap": None, "seconds": time.monotonic() - begun}
            print(f"{code_of(network)} seed {seed}: diverged ({exc})", flush=True)
    return done


def ranked(networks: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """Kendall τ-b of search value against mean retrained AP over the networks that have
    both, and its bootstrap 95 % interval (networks resampled with replacement)."""
    from spnas.search import kendall_tau

    pairs = [
        (n["search_value"], n["retrained_mean"])
        for n in networks
        if n.get("retrained_mean") is not None
    ]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    tau = kendall_tau(xs, ys) if len(pairs) >= 2 else None
    rng = random.Random(seed)
    taus = []
    for _ in range(resamples if tau is not None else 0):
        index = [rng.randrange(len(pairs)) for _ in pairs]
        value = kendall_tau([xs[i] for i in index], [ys[i] for i in index])
        if value is not None:  # a resample of one network (or all tied) has no τ
            taus.append(value)
    # quantiles(n=40) cuts at 1/40 … 39/40: the first and last are 2.5 % and 97.5 %.
    cuts = statistics.quantiles(taus, n=40, method="inclusive") if len(taus) >= 2 else None
    return {
        "networks": len(pairs),
        "tau": tau,
        "ci95": None if cuts is None else [cuts[0], cuts[-1]],
        "resamples": len(taus),
    }


def summarize_length(networks: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    """τ and its interval over every network and over the round's own."""
    every = ranked(networks, args.bootstrap, args.bootstrap_seed)
    own = ranked([n for n in networks if n["in_round"]], args.bootstrap, args.bootstrap_seed)
    return {
        "kendall_tau": every["tau"],
        "kendall_tau_ci95": every["ci95"],
        "ranked_networks": every["networks"],
        "enough_networks": every["networks"] >= MIN_NETWORKS,
        "kendall_tau_round": own["tau"],
        "kendall_tau_round_ci95": own["ci95"],
        "round_networks": own["networks"],
    }


def with_retrains(network: dict[str, Any], done: dict[str, Any], seeds: list[int]) -> None:
    """Copy the retrained APs of ``seeds`` (those measured so far) into ``network``."""
    runs = [done[str(s)] for s in seeds if str(s) in done]
    aps = [r["ap"] for r in runs if r["ap"] is not None]
    network["retrained"] = [r["ap"] for r in runs]
    network["retrained_mean"] = statistics.fmean(aps) if aps else None
    network["retrained_std"] = statistics.stdev(aps) if len(aps) > 1 else None
    network["retrain_seconds"] = statistics.fmean(r["seconds"] for r in runs) if runs else None


def load_retrains(paths: list[Path], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The retrains of earlier runs (``--resume``) that had the same retrain settings, merged
    (network by network, seed by seed; the first file's run wins on a repeat)."""
    retrains: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            continue
        previous = json.loads(path.read_text())
        if previous.get("settings", {}).get("retrain") != settings["retrain"]:
            print(f"{path}: other profile, overrides, seeds, schedule or threads; not reused")
            continue
        for code, runs in previous.get("retrains", {}).items():
            for seed, run in runs.items():
                retrains.setdefault(code, {}).setdefault(seed, run)
    return retrains


def combined(paths: list[Path]) -> dict[str, Any]:
    """One result of the runs in ``paths`` (each a trial length or more, run apart): their
    trial lengths side by side and their retrains merged. Refused (``SystemExit`` naming the
    file) when a run retrained otherwise or on other data, when two runs measured the same
    trial length, or when they disagree on a retrain both made (it is deterministic)."""
    runs = [(path, json.loads(path.read_text())) for path in paths]
    first_path, first = runs[0]
    result: dict[str, Any] = {
        "complete": all(run.get("complete", False) for _, run in runs),
        "settings": {
            **first["settings"],
            "trial_iters": [],
            "candidates_per_round": {},
            "combined_from": [path.name for path in paths],
        },
        "trial_lengths": {},
        "retrains": {},
        "wall_s": sum(run.get("wall_s", 0.0) for _, run in runs),
    }
    for path, run in runs:
        for key in ("retrain", "data", "bootstrap"):
            if run["settings"][key] != first["settings"][key]:
                raise SystemExit(
                    f"{path}: settings.{key} differs from {first_path}'s: only runs that "
                    "retrained alike on the same data combine"
                )
        for iters, entry in run["trial_lengths"].items():
            if iters in result["trial_lengths"]:
                raise SystemExit(f"{path}: trial length {iters} is in an earlier file too")
            # The combined file is written now: each length keeps when it was measured.
            result["trial_lengths"][iters] = {**entry, "measured_at": run.get("measured_at")}
            result["settings"]["trial_iters"].append(int(iters))
            result["settings"]["candidates_per_round"][iters] = run["settings"][
                "candidates_per_round"
            ]
        for code, seeds in run["retrains"].items():
            merged = result["retrains"].setdefault(code, {})
            for seed, retrain in seeds.items():
                if seed in merged and merged[seed]["ap"] != retrain["ap"]:
                    raise SystemExit(
                        f"{path}: {code} seed {seed} retrained to {retrain['ap']}, "
                        f"{merged[seed]['ap']} in an earlier file: not the same retrain"
                    )
                merged.setdefault(seed, retrain)
    return result


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", default="small-objects", choices=list(PROFILES))
    parser.add_argument(
        "--trial-iters",
        nargs="+",
        type=int,
        default=[150, 450],
        help="detection iterations of a search trial, one search each",
    )
    parser.add_argument("--candidates", type=int, default=11, help="trials per serial round")
    parser.add_argument(
        "--round", type=int, default=0, help="serial round to rank (0: the most candidates)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="retrains per network")
    parser.add_argument("--seed-base", type=int, default=1000, help="retrain seeds: base + k")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep studies and weights")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the result file's retrains (and --workdir)"
    )
    parser.add_argument(
        "--retrains-from",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="with --resume: reuse these result files' retrains too (e.g. another trial length's)",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="write these result files (trial lengths run apart) as one, without training",
    )
    add_set_argument(parser, "verify.schedule.iters=300")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out or RESULTS / f"{NAME}.json"
    if args.combine:
        write_result(NAME, combined(args.combine), out)
        report(out, args.json)
        return
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = search_overrides(args.candidates, args.overrides)
    seeds = [args.seed_base + k for k in range(args.repeats)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spnas-ranking-") as tmp:
        root = args.workdir or Path(tmp)
        configs = {i: study_config(root, args.profile, i, overrides) for i in args.trial_iters}
        verify = {i: c.verify_schedule.to_dict() for i, c in configs.items()}
        if any(schedule != verify[args.trial_iters[0]] for schedule in verify.values()):
            raise SystemExit(
                "the verification schedule follows the trial length (verify.schedule has no "
                "iters): set verify.schedule.iters so that every network retrains alike"
            )
        settings: dict[str, Any] = {
            "profile": args.profile,
            "trial_iters": args.trial_iters,
            "candidates_per_round": args.candidates,
            "bootstrap": args.bootstrap,
            # What a retrain depends on: a resumed run reuses retrains only when this matches.
            # The search's own overrides (trials per round, no verification) are not in it: a
            # search run again with more candidates reuses the retrains of the networks it
            # finds again.
            "retrain": {
                "profile": args.profile,
                "overrides": args.overrides,
                "seeds": seeds,
                "verify_schedule": verify[args.trial_iters[0]],
                # Reductions split across threads differently: the seed network's retrain
                # (seed 1000) is 25.88 AP on one thread and 23.55 on two.
                "torch_threads": torch.get_num_threads(),
            },
            "data": prepare_data(args.profile, root, overrides),
        }
        retrains = load_retrains([out, *args.retrains_from], settings) if args.resume else {}
        result: dict[str, Any] = {"complete": False, "settings": settings, "trial_lengths": {}}
        for iters, config in configs.items():
            state = run_search(config)
            round_ = args.round or busiest_round(state)
            networks = round_networks(state, round_)
            entry = {"round": round_, "trials": len(state.records), "networks": networks}
            result["trial_lengths"][str(iters)] = entry
            for network in networks:
                done = retrains.setdefault(code_of(network), {})
                retrain_network(configs[iters], network, seeds, root / args.profile, done)
                with_retrains(network, done, seeds)
                entry.update(summarize_length(networks, args))
                result.update(retrains=retrains, wall_s=time.monotonic() - started)
                write_result(NAME, result, out)
                print(
                    f"{iters} iters: {code_of(network)} ({', '.join(network['roles'])}) search "
                    f"{network['search_value']:.2f}, retrained {network['retrained']}",
                    flush=True,
                )
    result.update(complete=True, wall_s=time.monotonic() - started)
    write_result(NAME, result, out)
    report(out, args.json)


def report(out: Path, as_json: bool) -> None:
    """Print the result file ``out``: as JSON, or τ per trial length."""
    result = json.loads(out.read_text())
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for iters, entry in result["trial_lengths"].items():
        print(
            f"{iters}-iteration trials: τ {entry['kendall_tau']} {entry['kendall_tau_ci95']} over "
            f"{entry['ranked_networks']} networks; round {entry['round']} alone: τ "
            f"{entry['kendall_tau_round']} {entry['kendall_tau_round_ci95']}"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
