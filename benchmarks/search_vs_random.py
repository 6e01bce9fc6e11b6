"""SP-NAS serial search against random search at equal compute (the paper's Table 9 question).

On the synthetic benchmark (shapes, 128 px, 4 classes), for each of ``--seeds`` seeds:

- **SP-NAS**: the seed network ``BB(11,d1,d1,d1)``, crop-pretrained (the reignition routine)
  and trained, then ``--trials`` serial trials: mutations of the round's best, each inheriting
  its parent's trained weights (the real search: :func:`spnas.search.run_worker`).
- **Random search**: ``--trials`` + 1 codes drawn uniformly from the same space (the same block
  and stage bounds and as many channel doublings as the seed), each crop-pretrained by the same
  routine and trained with the same schedule. Each is the seed trial of a one-trial study,
  so it goes through exactly the code path of the SP-NAS seed.
- **Seed baseline**: the SP-NAS seed trial alone.

Both searches train the same number of detectors for the same iterations; random search also
pretrains every candidate (SP-NAS pretrains once), so compute is equal or in its favour.
Reported: best and mean AP of each method per seed, and over seeds the mean, standard
deviation, min and max of the per-seed bests.

Run: ``.venv/bin/python benchmarks/search_vs_random.py [--seeds 3] [--trials 4] [--json]``
(about 5 minutes per seed on a 2-core CPU).
"""

from __future__ import annotations

import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, report, spread

from spnas.arch import SearchSpace, SerialCode
from spnas.search import SearchConfig, create_search_study, run_worker

NAME = "search_vs_random"
SEED_ARCH = "BB(11,d1,d1,d1)"
SPACE = {"min_blocks": 8, "max_blocks": 14, "min_stages": 4, "max_stages": 5}


def study_values(root: Path, name: str, seed_arch: str, seed: int, trials: int) -> dict[str, Any]:
    """The smoke study's settings (studies/smoke.yaml), one serial round of ``trials``."""
    return {
        "study": {
            "name": name,
            "storage": f"sqlite:///{root / 'studies.db'}",
            "workdir": str(root / name),
        },
        "engine": {
            "name": "detectron2",
            "config": str(_configs() / "faster_rcnn_spnet_fpn_cpu.yaml"),
            "show_progress": False,
        },
        "data": {"dir": str(root / "data"), "metric": "AP"},
        "model": {
            "seed_arch": seed_arch,
            "width": 16,
            "norm": "BN",
            "fpn_channels": 32,
            "anchor_size": 8,
        },
        "space": SPACE,
        # n_stuck above the budget: every run trains exactly `trials` serial candidates.
        "serial": {"n_mutations": 2, "n_stuck": trials + 1, "n_rounds": 0, "max_trials": trials},
        "parallel": {"max_trials": 0},
        "reignite": {"epochs": 4, "image_size": 32, "batch_size": 32},
        "schedule": {
            "iters": 150,
            "ims_per_batch": 4,
            "base_lr": 0.02,
            "min_lr": 0.0001,
            "warmup_iters": 10,
            "min_size": 128,
            "max_size": 128,
            "num_workers": 0,
        },
        "search": {"seed": seed, "keep_top_k": 2, "wait_seconds": 0.5},
    }


def _configs() -> Path:
    return Path(__file__).resolve().parents[1] / "detectron_configs"


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


def run_study(root: Path, values: dict[str, Any], trials: int) -> list[tuple[str, float]]:
    """Run ``trials`` trials of a new study in this process; ``(kind, AP)`` of each."""
    config = SearchConfig.from_dict(values)
    create_search_study(config)
    run_worker(config.study.name, config.study.storage, max_trials=trials)
    study = optuna.load_study(study_name=config.study.name, storage=config.study.storage)
    out = []
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        out.append((str(trial.system_attrs.get("spnas:kind")), float(trial.value)))
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4, help="serial trials after the seed")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)

    from spnas.data.synthetic import make_synthetic_dataset

    space = SearchSpace(**SPACE)
    doublings = str(SerialCode.parse(SEED_ARCH)).count("d")
    per_seed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spnas-svr-") as tmp:
        root = Path(tmp)
        make_synthetic_dataset(
            root / "data", train=160, val=40, size=128, classes=4, seed=0, show_progress=False
        )
        for seed in range(args.seeds):
            values = study_values(root, f"spnas-{seed}", SEED_ARCH, seed, args.trials)
            spnas = run_study(root, values, args.trials + 1)
            seed_ap = next(ap for kind, ap in spnas if kind == "seed")
            rng = random.Random(seed)
            randoms, diverged = [], 0
            for index in range(args.trials + 1):
                code = str(random_code(space, doublings, rng))
                values = study_values(root, f"random-{seed}-{index}", code, seed, args.trials)
                done = run_study(root, values, 1)
                # A candidate whose training diverged is a failed trial of the random search:
                # it found nothing (AP 0), as a search budget spent on it would.
                randoms.append((code, done[0][1] if done else 0.0))
                diverged += not done
            row = {
                "seed": seed,
                "seed_baseline_ap": seed_ap,
                "spnas_best_ap": max(ap for _, ap in spnas),
                "spnas_mean_ap": statistics.fmean(ap for _, ap in spnas),
                "spnas_trained": len(spnas),
                "random_best_ap": max(ap for _, ap in randoms),
                "random_mean_ap": statistics.fmean(ap for _, ap in randoms),
                "random_trained": len(randoms),
                "random_codes": randoms,
                "random_diverged": diverged,
            }
            per_seed.append(row)
            print(
                f"seed {seed}: baseline {seed_ap:.2f}, SP-NAS best {row['spnas_best_ap']:.2f}, "
                f"random best {row['random_best_ap']:.2f}",
                flush=True,
            )
            report(NAME, summarize(per_seed, args, started, complete=False), args)
    report(NAME, summarize(per_seed, args, started, complete=True), args)


def summarize(
    per_seed: list[dict[str, Any]], args: Any, started: float, complete: bool
) -> dict[str, Any]:
    """The result over the seeds done so far (written after each seed)."""
    return {
        "complete": complete,
        "seeds_done": len(per_seed),
        "trials_per_method": args.trials + 1,
        "per_seed": per_seed,
        "seed_baseline_ap": spread([r["seed_baseline_ap"] for r in per_seed]),
        "spnas_best_ap": spread([r["spnas_best_ap"] for r in per_seed]),
        "random_best_ap": spread([r["random_best_ap"] for r in per_seed]),
        "spnas_mean_ap": spread([r["spnas_mean_ap"] for r in per_seed]),
        "random_mean_ap": spread([r["random_mean_ap"] for r in per_seed]),
        "diverged_random_candidates": sum(row["random_diverged"] for row in per_seed),
        "wall_s": time.monotonic() - started,
    }


if __name__ == "__main__":
    main()
