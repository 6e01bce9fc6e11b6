"""Does the architecture matter on the benchmark profiles? Hand-made networks at equal training.

Before searching on a synthetic profile (``spnas data synth --profile NAME``), check that it can
reward a search at all: on each profile, every network of ``NETS`` is retrained from scratch
the same way (:func:`spnas.search.retrain`: crop pretraining from random weights with the
study's ``reignite`` settings, then one detection schedule, both seeded with the repeat's
seed; every network sees the same seeds), with the settings of the profile's study YAML
(``studies/bench-*.yaml``). Reported per profile and network: each repeat's AP, mean, standard
deviation, GMACs and seconds per retrain; per profile, the gain of the network suited to it
over the seed ``BB(11,d1,d1,d1)`` in units of the seed's standard deviation (the target is
more than 2), and the same for the network that turned out best.

Run: ``.venv/bin/python benchmarks/profiles.py [--repeats 3] [--iters N] [--json]``
(``--profiles`` and ``--nets`` choose a subset; ``--set KEY=VALUE`` overrides a key of every
profile's study YAML, e.g. ``data.synthetic.train=8`` or ``reignite.epochs=1`` for a toy run).
``--init random`` skips the crop pretraining: the detector starts from random weights drawn
with the repeat's seed, the control that shows what reignition's pretraining is worth (compare
with a ``--init pretrained`` file of the same settings, seed by seed).
``--paired A.json B.json`` trains nothing: per profile and network of both files, the
differences A − B seed by seed (over the seeds both retrained) with their paired 95 %
interval, e.g. pretrained against random weights; the files must hold the same detection
iterations and data (they may differ in ``--init`` and the pretraining, the variables under
test).
Results go to ``benchmarks/results/profiles.json`` (or ``--out``), rewritten after every
retrain; ``--resume`` keeps the retrains already there (same schedule and overrides) and runs
only the missing ones. A retrain is deterministic for its seed on one machine, so resuming
loses nothing.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, add_set_argument, base_parser, write_result
from _paired import paired

NAME = "profiles"
ROOT = Path(__file__).resolve().parents[1]

#: The hand-made networks: the seed's 8 blocks and 3 doublings ("11d1d1d1") cut into stages
#: differently, so they differ in where the blocks are, not in how many there are. The search
#: reaches high-res from the seed by three swaps, and deep's 9-block cousin BB(11,d1,d1,d,11) by
#: add_stage and a swap. (Variants with 10 blocks,
#: BB(1111,d111,d1,d1) and BB(11,d1,d1,d11,1), trained to a lower AP than the seed at 300
#: iterations on small-objects: 9.0 and 7.4 against 11.7, seed 0.)
NETS: dict[str, str] = {
    # ResNet-18's layout, the studies' seed.
    "seed": "BB(11,d1,d1,d1)",
    # Every stage starts one block earlier (swap b0, b1, b2 to the right): more blocks and
    # channels at strides 4-16.
    "high-res": "BB(11d,1d,1d,1)",
    # The seed's last stage split into a fifth (stride 64): receptive field and a learned top
    # FPN level for large objects.
    "deep": "BB(11,d1,d1,d,1)",
}
#: Per profile: its study YAML and the network of NETS made for it.
PROFILES: dict[str, tuple[str, str]] = {
    "small-objects": ("studies/bench-small.yaml", "high-res"),
    "large-objects": ("studies/bench-large.yaml", "deep"),
}


def profile_yaml(profile: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile's study YAML (``studies/bench-*.yaml``) with ``overrides`` (``--set``)."""
    from spnas.search._config import apply_override

    values = yaml.safe_load((ROOT / PROFILES[profile][0]).read_text(encoding="utf-8"))
    for item in overrides:
        apply_override(values, item)
    return values


def study_values(
    profile: str, root: Path, iters: int, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """The profile's study YAML with its data and work directories under ``root``.

    The data set is generated here (:func:`prepare_data`), so ``data.synthetic`` is dropped.
    """
    values = profile_yaml(profile, overrides)
    values["study"]["workdir"] = str(root / profile / "work")
    values["study"]["storage"] = f"sqlite:///{root / profile / 'study.db'}"
    values["data"]["dir"] = str(root / profile / "data")
    values["data"].pop("synthetic")
    values["engine"]["config"] = str((ROOT / "studies" / values["engine"]["config"]).resolve())
    if iters:
        values["schedule"]["iters"] = iters
    return values


def prepare_data(
    profile: str, root: Path, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Generate the profile's data set as its study YAML describes it; the settings used."""
    from spnas.data.synthetic import make_synthetic_dataset

    values = profile_yaml(profile, overrides)
    synthetic = dict(values["data"]["synthetic"])
    synthetic["profile"] = profile
    make_synthetic_dataset(root / profile / "data", **synthetic, show_progress=False)
    return synthetic


def summarize(
    runs: dict[str, dict[str, dict[str, Any]]], settings: dict[str, Any], complete: bool
) -> dict[str, Any]:
    """Per profile and network: each repeat, APs, mean, std, GMACs, seconds; the verdict."""
    profiles: dict[str, Any] = {}
    for profile, nets in runs.items():
        table = {}
        for net, run in nets.items():
            done = sorted(run["runs"], key=lambda r: r["seed"])
            if not done:
                continue
            aps = [r["ap"] for r in done]
            table[net] = {
                "arch": NETS[net],
                "runs": done,
                "ap": aps,
                "mean": statistics.fmean(aps),
                "std": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                "diverged_seeds": sorted(run["diverged_seeds"]),
                "gmacs": run["gmacs"],
                "retrain_seconds": statistics.fmean(r["seconds"] for r in done),
            }
        profiles[profile] = {"nets": table, **verdict(profile, table)}
    return {"complete": complete, **settings, "profiles": profiles}


def load_runs(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The retrains a previous run wrote to ``path`` (``--resume``).

    A profile run now keeps only the retrains with its current schedule, ``--set`` overrides and
    ``--init`` (others do not compare); a profile not run now is kept whole, with its data and
    schedule settings.
    """
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    same_settings = (
        previous.get("overrides", []) == settings["overrides"]
        and previous.get("init", "pretrained") == settings["init"]
    )
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for profile, entry in previous.get("profiles", {}).items():
        schedule = previous.get("schedule", {}).get(profile)
        if profile not in settings["schedule"]:
            settings["schedule"][profile] = schedule
            settings["data"][profile] = previous["data"][profile]
        elif schedule != settings["schedule"][profile] or not same_settings:
            continue
        for net, row in entry["nets"].items():
            if NETS.get(net) == row["arch"]:
                runs.setdefault(profile, {})[net] = {
                    "runs": row["runs"],
                    "diverged_seeds": row["diverged_seeds"],
                    "gmacs": row["gmacs"],
                }
    return runs


def verdict(profile: str, table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The suited and the best network's gains over the seed, also in seed standard deviations.

    ``suited`` is the network chosen for the profile before measuring; ``best`` is picked after,
    so its gain is the optimistic one.
    """
    out: dict[str, Any] = {"suited": PROFILES[profile][1]}
    if table:
        out["best"] = max(table, key=lambda net: table[net]["mean"])
    seed = table.get("seed")
    for key, net in (("suited", out["suited"]), ("best", out.get("best"))):
        if seed and net in table:
            gain = table[net]["mean"] - seed["mean"]
            out[f"{key}_gain_over_seed"] = gain
            out[f"{key}_gain_in_seed_std"] = gain / seed["std"] if seed["std"] > 0 else None
    return out


def compared(path_a: Path, path_b: Path) -> dict[str, Any]:
    """Per profile and network in both files: ``a − b`` paired by seed (``--paired``).

    Raises:
        ValueError: the files trained their detectors for other iteration counts or on other
            data on a profile they share, or share no profile and network.
    """
    a, b = (json.loads(path.read_text()) for path in (path_a, path_b))
    profiles: dict[str, dict[str, Any]] = {}
    for profile in sorted(set(a["profiles"]) & set(b["profiles"])):
        # The detection schedule and the data must match; the pretraining may differ (it is
        # what --init and --set reignite.* vary).
        for key, part in (("schedule", "iters"), ("data", None)):
            left, right = a[key][profile], b[key][profile]
            if part is not None:
                left, right = left[part], right[part]
            if left != right:
                raise ValueError(
                    f"{path_a} and {path_b} differ in {key} on {profile}: "
                    f"{left} against {right}; expected the same"
                )
        nets_a, nets_b = a["profiles"][profile]["nets"], b["profiles"][profile]["nets"]
        for net in sorted(set(nets_a) & set(nets_b)):
            ap_a = {r["seed"]: r["ap"] for r in nets_a[net]["runs"]}
            ap_b = {r["seed"]: r["ap"] for r in nets_b[net]["runs"]}
            seeds = sorted(set(ap_a) & set(ap_b))
            left, right = [ap_a[seed] for seed in seeds], [ap_b[seed] for seed in seeds]
            profiles.setdefault(profile, {})[net] = {
                "seeds": seeds,
                "a": left,
                "b": right,
                **paired(left, right),
            }
    if not profiles:
        raise ValueError(f"{path_a} and {path_b} share no profile and network")
    sides = {
        side: {key: result.get(key) for key in ("init", "overrides", "schedule", "measured_at")}
        for side, result in (("a", a), ("b", b))
    }
    return {"paired": [str(path_a), str(path_b)], **sides, "profiles": profiles}


def print_table(result: dict[str, Any]) -> None:
    """One row per profile and network: AP mean ± std (repeats), GMACs, seconds per retrain."""
    print(f"{'profile':15} {'net':9} {'arch':22} {'AP mean ± std':>15}  repeats")
    for profile, entry in result["profiles"].items():
        for net, row in entry["nets"].items():
            repeats = ", ".join(f"{ap:.1f}" for ap in row["ap"])
            print(
                f"{profile:15} {net:9} {row['arch']:22} {row['mean']:7.2f} ± {row['std']:5.2f}"
                f"  [{repeats}]  {row['gmacs']:.3f} GMACs  {row['retrain_seconds']:.0f} s"
                + (f"  (diverged: seeds {row['diverged_seeds']})" if row["diverged_seeds"] else "")
            )
        gains = []
        for key in ("suited", "best"):
            if f"{key}_gain_over_seed" in entry:
                ratio = entry[f"{key}_gain_in_seed_std"]
                gains.append(
                    f"{key} {entry[key]} - seed = {entry[f'{key}_gain_over_seed']:+.2f} AP"
                    + (f" ({ratio:+.1f} seed std)" if ratio is not None else "")
                )
        print(f"{profile:15} {'; '.join(gains)}")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="seeds 0..N-1 per network")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument(
        "--iters", type=int, default=300, help="detection iterations (0: the study's schedule)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and weights here")
    parser.add_argument(
        "--init",
        choices=("pretrained", "random"),
        default="pretrained",
        help="start the detector from crop pretraining (reignite settings) or random weights",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the result file's retrains, run the rest"
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="train nothing: the paired differences A − B of two result files",
    )
    add_set_argument(parser, "data.synthetic.train=8")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.paired:
        try:
            result = compared(*args.paired)
        except ValueError as exc:
            parser.error(str(exc))
        out = write_result(f"{NAME}-paired", result, args.out)
        for profile, nets in result["profiles"].items():
            for net, row in nets.items():
                low, high = row["ci95"] or (float("nan"), float("nan"))
                print(
                    f"{profile} {net}: A − B {row['mean']:+.2f} AP, 95 % [{low:+.2f}, "
                    f"{high:+.2f}] over seeds {row['seeds']}"
                )
        print(f"written: {out}")
        return
    out = args.out or RESULTS / f"{NAME}.json"

    from spnas.search import SearchConfig

    started = time.monotonic()
    settings: dict[str, Any] = {
        "repeats": args.repeats,
        "init": args.init,
        "overrides": args.overrides,
        "data": {},
        "schedule": {},
    }
    with tempfile.TemporaryDirectory(prefix="spnas-profiles-") as tmp:
        root = args.workdir or Path(tmp)
        configs = {}
        for profile in args.profiles:
            settings["data"][profile] = prepare_data(profile, root, args.overrides)
            configs[profile] = SearchConfig.from_dict(
                study_values(profile, root, args.iters, args.overrides)
            )
            settings["schedule"][profile] = {
                "iters": configs[profile].schedule.iters,
                "reignite_epochs": configs[profile].reignite.epochs,
            }
        runs = load_runs(out, settings) if args.resume else {}
        # Repeats outermost: a run stopped early still has every network on every profile.
        for seed in range(args.repeats):
            for profile, config in configs.items():
                for net in args.nets:
                    run = runs.setdefault(profile, {}).setdefault(
                        net, {"runs": [], "diverged_seeds": [], "gmacs": None}
                    )
                    if seed in run["diverged_seeds"] or any(r["seed"] == seed for r in run["runs"]):
                        continue
                    retrain_one(config, profile, net, seed, root, run, args.init == "pretrained")
                    partial = summarize(runs, settings, complete=False)
                    partial["wall_s"] = time.monotonic() - started
                    write_result(NAME, partial, out)
    result = summarize(runs, settings, complete=True)
    result["wall_s"] = time.monotonic() - started
    write_result(NAME, result, out)
    if args.json:
        print(json.dumps(json.loads(out.read_text()), indent=2))
    else:
        print_table(result)
        print(f"written: {out}")


def retrain_one(
    config: Any,
    profile: str,
    net: str,
    seed: int,
    root: Path,
    run: dict[str, Any],
    pretrain: bool = True,
) -> None:
    """Retrain ``net`` on ``profile`` with ``seed`` (``pretrain``: crop pretraining first, else
    from random weights); append the AP and seconds to ``run``."""
    from spnas.engines import TrialDiverged
    from spnas.search import retrain

    begun = time.monotonic()
    try:
        result = retrain(
            config,
            NETS[net],
            seed=seed,
            out_dir=root / profile / "retrain" / f"{net}-{seed}",
            pretrain=pretrain,
        )
    except TrialDiverged as exc:
        # Reported, not averaged in: a diverged run has no AP to compare.
        run["diverged_seeds"].append(seed)
        print(f"{profile} {net} seed {seed}: diverged ({exc})", flush=True)
        return
    ap = float(result.detection.metric(config.data.metric))
    seconds = time.monotonic() - begun
    run["runs"].append({"seed": seed, "ap": ap, "seconds": seconds})
    run["gmacs"] = result.detection.gmacs
    print(f"{profile} {net} seed {seed}: AP {ap:.2f} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
