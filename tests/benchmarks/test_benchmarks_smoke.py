"""Benchmarks cannot rot: every script of ``benchmarks/`` runs end to end at toy size.

Each test runs its script as a user would (``python benchmarks/X.py …`` from the repository
root) with explicit small sizes — tiny images, a few trials, one or two iterations, one or two
repeats — and ``--out`` in a temporary directory (the stored results in
``benchmarks/results/`` are never touched), then checks the JSON the script wrote. The figures
of such a run mean nothing; what is tested is that the measuring code still runs against the
library as it is now (``overhead.py`` once failed on every run because its synthetic history
lacked the ``control`` trials of equal training, and no test ran it).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

#: ``--set`` overrides of the benchmark studies (``studies/bench-*.yaml``) for a toy run:
#: 8 training images of 64 px, width 8, one pretraining epoch, two detection iterations.
TOY_STUDY = [
    "data.synthetic.train=8",
    "data.synthetic.val=4",
    "data.synthetic.size=64",
    "model.width=8",
    "model.fpn_channels=16",
    "reignite.epochs=1",
    "schedule.min_size=64",
    "schedule.max_size=64",
    "schedule.ims_per_batch=2",
    "schedule.warmup_iters=1",
]


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def run_script(
    script: str, *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> args…`` from the repository root."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
    )


def result_of(run: subprocess.CompletedProcess[str], out: Path, name: str) -> dict[str, Any]:
    """The JSON the script wrote to ``out``, after checking that it ran."""
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert out.is_file(), f"no result file {out}\n{run.stdout[-3000:]}"
    result = json.loads(out.read_text())
    assert result["benchmark"] == name
    assert result["machine"]["cpus"] >= 1
    return result


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported, for its functions (the folder is not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_morphism(tmp_path: Path) -> None:
    out = tmp_path / "morphism.json"
    result = result_of(
        run_script("morphism.py", "--cases", "1", "--out", str(out)), out, "morphism"
    )
    assert result["cases_per_op"] == 1
    assert set(result["blocks"]) == {"BB", "BNB", "XB"}
    for ops in result["blocks"].values():
        assert set(ops) == {"expand", "add_stage", "parallel", "parallel_grow", "swap"}
        for op, entry in ops.items():
            assert len(entry["cases"]) == 1
            assert 0 < entry["inherited_fraction"] <= 1
            assert finite(entry["max_abs_diff_eval"]) and finite(entry["max_abs_diff_train"])
            if op != "swap":  # function-preserving: the benchmark's own target
                assert max(entry["max_abs_diff_eval"], entry["max_abs_diff_train"]) <= 1e-5
    assert result["meets_targets"] is True


def test_overhead(tmp_path: Path) -> None:
    """The default comparison (equal training: ``control`` trials in the history)."""
    out = tmp_path / "overhead.json"
    run = run_script(
        "overhead.py",
        *("--trials", "12", "--measure", "2", "--artifact-repeats", "1", "--out", str(out)),
    )
    result = result_of(run, out, "overhead_sqlite")
    assert result["storage"] == "sqlite"
    assert result["comparison"] == "equal_training"
    (row,) = result["rows"]
    assert row["trials_in_history"] == 12
    for key in (
        "sampler_ms_per_trial",
        "decision_ms",
        "decision_ms_max",
        "parallel_sampler_ms_per_trial",
        "parallel_decision_ms",
        "parallel_to_serial",
        "random_sampler_ms_per_trial",
        "ratio",
        "decision_storage_ms",
    ):
        assert positive(row[key]), (key, row[key])
    # The storage calls are timed inside the decision: a part of it.
    assert row["decision_storage_ms"] < row["decision_ms"]
    assert row["decision_compute_ms"] == pytest.approx(
        row["decision_ms"] - row["decision_storage_ms"], abs=0.5 * row["decision_ms"]
    )
    artifact = result["artifact"]
    assert artifact["state_dict_mb"] > 100  # a ResNet-50 SPNet Faster R-CNN, ~160 MB
    assert positive(artifact["upload_ms"]) and positive(artifact["download_ms"])
    # No 5,000-trial row in a toy run: the targets are not judged.
    assert result["meets_ratio_target"] is None and result["meets_decision_target"] is None


def test_parity(tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    run = run_script(
        "parity.py",
        *("--size", "64", "--batch", "1", "--warmup", "0", "--reps", "1", "--threads", "1"),
        *("--out", str(out)),
    )
    result = result_of(run, out, "parity")
    assert result["settings"]["size"] == 64
    assert set(result["pairs"]) == {"resnet50", "resnet18"}
    assert result["params_match"] is True
    for name, pair in result["pairs"].items():
        assert positive(result["ratio"][name]) and positive(result["torchvision_ratio"][name])
        for model in pair["models"].values():
            assert positive(model["s_per_iter"]) and positive(model["params_m"])
    # Bottlenecks are also timed against detectron2's ResNet with the stride on the 3x3 conv.
    assert set(result["same_strides_ratio_paired"]) == {"resnet50"}


def test_profiles(tmp_path: Path) -> None:
    out = tmp_path / "profiles.json"
    run = run_script(
        "profiles.py",
        *("--profiles", "small-objects", "--nets", "seed", "high-res", "--repeats", "2"),
        *("--iters", "2", *sets(TOY_STUDY), "--out", str(out)),
    )
    result = result_of(run, out, "profiles")
    assert result["complete"] is True
    assert result["overrides"] == TOY_STUDY
    assert result["schedule"]["small-objects"] == {"iters": 2, "reignite_epochs": 1}
    assert result["data"]["small-objects"]["train"] == 8
    entry = result["profiles"]["small-objects"]
    assert set(entry["nets"]) == {"seed", "high-res"}
    for row in entry["nets"].values():
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        assert all(finite(ap) for ap in row["ap"]) and finite(row["std"])
        assert positive(row["gmacs"]) and positive(row["retrain_seconds"])
    assert entry["suited"] == "high-res"
    assert finite(entry["suited_gain_over_seed"])


def test_profiles_from_random_weights(tmp_path: Path) -> None:
    """``--init random``: no crop pretraining runs, the result says so, and a resume does not
    mix in the retrains of another init; ``--paired`` compares the two files seed by seed."""
    out, work = tmp_path / "profiles.json", tmp_path / "work"
    common = (
        *("--profiles", "small-objects", "--nets", "seed", "--repeats", "1", "--iters", "2"),
        *sets(TOY_STUDY),
    )
    run_script("profiles.py", *common, "--out", str(out), "--workdir", str(work))
    retrains = work / "small-objects" / "retrain"
    assert list(retrains.rglob("pretrained_backbone.pth"))
    pretrained = tmp_path / "pretrained.json"
    shutil.copyfile(out, pretrained)
    shutil.rmtree(retrains)
    run = run_script(
        "profiles.py",
        *common,
        *("--init", "random", "--resume", "--out", str(out), "--workdir", str(work)),
    )
    result = result_of(run, out, "profiles")
    assert result["init"] == "random"
    # Retrained again (the pretrained run was not resumed), without pretraining.
    assert list(retrains.rglob("model_final.pth"))
    assert not list(retrains.rglob("pretrained_backbone.pth*"))
    (row,) = result["profiles"]["small-objects"]["nets"].values()
    assert [r["seed"] for r in row["runs"]] == [0] and finite(row["ap"][0])

    comparison = tmp_path / "paired.json"
    run = run_script("profiles.py", "--paired", str(pretrained), str(out), "--out", str(comparison))
    paired = result_of(run, comparison, "profiles-paired")
    assert (paired["a"]["init"], paired["b"]["init"]) == ("pretrained", "random")
    before = json.loads(pretrained.read_text())["profiles"]["small-objects"]["nets"]["seed"]
    compared = paired["profiles"]["small-objects"]["seed"]
    assert compared["seeds"] == [0] and compared["ci95"] is None  # one seed: no interval
    assert compared["differences"] == [pytest.approx(before["ap"][0] - row["ap"][0])]


def test_profiles_paired_lets_the_pretraining_differ_not_the_detection(tmp_path: Path) -> None:
    profiles = benchmark_module("profiles")

    def result_file(name: str, aps: list[float], iters: int, epochs: int) -> Path:
        runs = [{"seed": seed, "ap": ap} for seed, ap in enumerate(aps)]
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "init": "pretrained",
                    "overrides": [],
                    "schedule": {"small-objects": {"iters": iters, "reignite_epochs": epochs}},
                    "data": {"small-objects": {"val": 400}},
                    "profiles": {"small-objects": {"nets": {"seed": {"runs": runs}}}},
                }
            )
        )
        return path

    four = result_file("four", [30.0, 32.0, 31.0], 900, 4)
    sixteen = result_file("sixteen", [31.0, 34.0, 31.5, 40.0], 900, 16)
    row = profiles.compared(sixteen, four)["profiles"]["small-objects"]["seed"]
    assert row["seeds"] == [0, 1, 2]  # the seeds both retrained
    assert row["differences"] == pytest.approx([1.0, 2.0, 0.5])
    low, high = row["ci95"]
    assert low < row["mean"] < high
    with pytest.raises(ValueError, match="differ in schedule on small-objects: 300 against 900"):
        profiles.compared(result_file("short", [30.0], 300, 4), four)


@pytest.mark.slow
def test_search_vs_random(tmp_path: Path) -> None:
    """The baselines (seed, high-res, 2 unselected random networks), a whole toy search
    (``spnas search``, 1 worker: seed, control and its noise repeat, one serial trial, the
    parallel phase), random search at its measured CPU seconds, both picks retrained on the
    disjoint verification seeds, the paired intervals, and the study kept beside the result;
    then the run resumed after losing its last retrains and its row."""
    out = tmp_path / "svr.json"
    toy = [
        *TOY_STUDY,
        "schedule.iters=2",
        "verify.schedule.iters=2",
        "serial.n_rounds=0",
        "serial.max_trials=1",
        "parallel.max_trials=1",
        "search.wait_seconds=0.1",
    ]
    run = run_script(
        "search_vs_random.py",
        *("--profiles", "small-objects", "--seeds", "1", "--verify-seeds", "2"),
        *("--unselected", "2", *sets(toy), "--out", str(out)),
        *("--workdir", str(tmp_path / "work")),
        timeout=600,
    )
    result = result_of(run, out, "search_vs_random")
    assert result["complete"] is True
    settings = result["settings"]
    assert settings["overrides"] == toy and settings["budget"] == "trial_cpu_seconds"
    assert settings["verify_seeds"] == [1000, 1001]
    entry = result["profiles"]["small-objects"]
    assert entry["seed"]["arch"] == "BB(11,d1,d1,d1)"
    assert entry["high_res"]["arch"] == "BB(11d,1d,1d,1)"
    assert entry["high_res"]["gmacs"] > entry["seed"]["gmacs"] > 0
    unselected = entry["unselected"]
    assert len(unselected["networks"]) == 2 and len(unselected["mean_per_seed"]) == 2
    for j, mean in enumerate(unselected["mean_per_seed"]):
        assert mean == pytest.approx(sum(n["retrained"][j] for n in unselected["networks"]) / 2)
    (row,) = entry["per_search"]
    spnas, pick = row["spnas"], row["random"]
    # seed, control and its noise repeat, serial, parallel seed, control, repeat, parallel
    assert spnas["trials"] >= 6
    assert spnas["arch"].startswith("BB(") and spnas["parallel"] is not None
    assert positive(spnas["budget_cpu_seconds"]) and positive(pick["budget_cpu_seconds"])
    assert positive(spnas["wall_seconds"]) and spnas["uncharged_trials"] == []
    assert pick["trained"] == len(pick["candidates"]) >= 1
    spent = sum(c["cpu_seconds"] for c in pick["candidates"])
    assert spent == pytest.approx(pick["budget_cpu_seconds"])
    # The budget rule: a candidate started only while the mean candidate still fitted.
    before_last = spent - pick["candidates"][-1]["cpu_seconds"]
    assert pick["trained"] == 1 or before_last * pick["trained"] / (pick["trained"] - 1) <= (
        spnas["budget_cpu_seconds"] * (1 + 1e-9)
    )
    # Every seed either search trained with is below the verification seeds.
    assert 0 in spnas["seeds_used"] and pick["seeds_used"] == [0]
    assert max(spnas["seeds_used"]) < 1000
    # The study is kept beside the result, with every trial the budget counted.
    study = Path(spnas["study"])
    assert study == tmp_path / "svr" / "spnas-small-objects-0.db" and study.is_file()
    import optuna

    trials = optuna.load_study(
        study_name="spnas-small-objects-0", storage=f"sqlite:///{study}"
    ).get_trials()
    assert sum("kind" in t.user_attrs for t in trials) == spnas["trials"]
    assert spnas["budget_cpu_seconds"] == pytest.approx(
        sum(t.user_attrs.get("cpu_s", 0.0) for t in trials)
    )
    assert row["gmacs_over_high_res"]["spnas"] == pytest.approx(
        spnas["gmacs"] / entry["high_res"]["gmacs"]
    )
    for method in (spnas, pick, entry["seed"], entry["high_res"]):
        assert len(method["retrained"]) == 2 and all(finite(v) for v in method["retrained"])
    diffs = row["paired"]["spnas_minus_random"]
    assert diffs["differences"] == pytest.approx(
        [a - b for a, b in zip(spnas["retrained"], pick["retrained"], strict=True)]
    )
    assert (
        set(row["paired"])
        == set(entry["pooled"])
        >= {
            "spnas_minus_random",
            "spnas_minus_seed",
            "spnas_minus_unselected",
            "spnas_minus_high_res",
        }
    )
    for paired in row["paired"].values():
        low, high = paired["ci95"]
        assert paired["n"] == 2 and low <= paired["mean"] <= high
    pooled = entry["pooled"]["spnas_minus_seed"]
    assert pooled["searches"] == 1 and pooled["over_searches"]["ci95"] is None
    assert pooled["over_seeds"]["differences"] == row["paired"]["spnas_minus_seed"]["differences"]
    assert result["cross_profile"] == []  # one profile: nothing to cross
    # A second run into the same run directory would mix two runs' studies: refused.
    again = run_script("search_vs_random.py", "--profiles", "small-objects", "--out", str(out))
    assert again.returncode != 0 and "not empty" in again.stderr

    # Interrupted before the search's row and its random pick's retrains: --resume reuses the
    # finished study, the random candidates (their CPU seconds unchanged: not trained again)
    # and the retrains kept, and retrains the lost ones to the same APs (deterministic).
    cut = json.loads(out.read_text())
    cut["complete"] = False
    cut_entry = cut["profiles"]["small-objects"]
    cut_entry["random_in_progress"] = {"0": pick["candidates"]}
    cut_entry["per_search"], cut_entry["pooled"] = [], {}
    code = pick["arch"] + ("" if pick["parallel"] is None else f" {pick['parallel']}")
    cut["retrains"]["small-objects"].pop(code)
    out.write_text(json.dumps(cut))
    resumed = run_script(
        "search_vs_random.py",
        *("--profiles", "small-objects", "--seeds", "1", "--verify-seeds", "2"),
        *("--unselected", "2", *sets(toy), "--out", str(out)),
        *("--workdir", str(tmp_path / "work"), "--resume"),
        timeout=600,
    )
    again = result_of(resumed, out, "search_vs_random")
    assert again["complete"] is True and again["retrains"] == result["retrains"]
    (row_again,) = again["profiles"]["small-objects"]["per_search"]
    assert row_again["random"]["candidates"] == pick["candidates"]
    assert row_again["spnas"]["budget_cpu_seconds"] == spnas["budget_cpu_seconds"]
    assert row_again["paired"] == row["paired"]
    assert "random_in_progress" not in again["profiles"]["small-objects"]
    # Other settings than the file's: refused, nothing overwritten.
    other = run_script(
        "search_vs_random.py",
        *("--profiles", "small-objects", "--seeds", "1", "--verify-seeds", "3"),
        *("--out", str(out), "--workdir", str(tmp_path / "work"), "--resume"),
    )
    assert other.returncode != 0 and "other settings" in other.stderr
    assert json.loads(out.read_text())["retrains"] == result["retrains"]


@pytest.mark.slow
def test_search_vs_random_picks_from_an_old_file(tmp_path: Path) -> None:
    """--picks-from on a file from before the disjoint seeds (``per_seed`` rows, a budget in
    optimizer steps, verified on seeds 0-2): its picks are verified again on seeds 1000+k
    beside this run's baselines, and the profile says its budget was optimizer steps."""
    toy = [*TOY_STUDY, "schedule.iters=2", "verify.schedule.iters=2"]
    old = tmp_path / "old.json"
    pick = {"arch": "BB(1,1d,1d1,d1)", "parallel": "(2,2,1,0)", "search_ap": 1.0}
    seed = {"arch": "BB(11,d1,d1,d1)", "parallel": None, "search_ap": 0.5}
    old_ap = {"retrained": [9.0, 8.0, 7.0]}  # verified on seeds 0-2: replaced
    old.write_text(
        json.dumps(
            {
                "measured_at": "2026-12-01T00:00:00+00:00",
                "settings": {"seeds": 1, "repeats": 3, "overrides": toy},
                "profiles": {
                    "small-objects": {
                        "per_seed": [
                            {
                                "seed": 0,
                                "spnas": {**pick, "trials": 8, "budget_steps": 900, **old_ap},
                                "random": {**seed, "trained": 3, "budget_steps": 880, **old_ap},
                            }
                        ]
                    }
                },
            }
        )
    )
    out = tmp_path / "reverified.json"
    run = run_script(
        "search_vs_random.py",
        *("--picks-from", str(old), "--verify-seeds", "2", "--unselected", "1"),
        *("--out", str(out)),
        timeout=400,
    )
    result = result_of(run, out, "search_vs_random")
    assert result["complete"] is True and result["from"][0]["file"] == "old.json"
    entry = result["profiles"]["small-objects"]
    assert entry["budget"] == "optimizer_steps" and entry["overrides"] == toy
    (row,) = entry["per_search"]
    assert row["search"] == 0 and row["budget_ratio"] == pytest.approx(880 / 900)
    for method in (row["spnas"], row["random"], entry["seed"], entry["unselected"]["networks"][0]):
        assert len(method["retrained"]) == 2 and all(finite(v) for v in method["retrained"])
    # The old random pick is the seed's architecture, retrained with the same seeds: the same
    # APs (a retrain is deterministic for its seed on one machine).
    assert row["random"]["retrained"] == entry["seed"]["retrained"]
    assert row["paired"]["random_minus_seed"]["differences"] == [0.0, 0.0]


def test_search_vs_random_refuses_old_files_for_cross(tmp_path: Path) -> None:
    """--cross-from pairs an earlier file's native picks with new retrains: a file verified on
    seeds 0-2 (before the disjoint seeds) is refused, naming --picks-from."""
    run = run_script(
        "search_vs_random.py",
        *("--cross-from", "benchmarks/results/search_vs_random.json"),
        *("--out", str(tmp_path / "cross.json")),
        timeout=120,
    )
    assert run.returncode != 0
    assert "--picks-from" in run.stderr and "before disjoint seeds" in run.stderr
    assert not (tmp_path / "cross.json").exists()


@pytest.mark.slow
def test_ranking(tmp_path: Path) -> None:
    """Two toy searches (trial lengths 2 and 3: seed, control repeats, two serial candidates,
    the parallel phase), every network of the round retrained twice, τ per trial length; then
    the same run resumed."""
    out = tmp_path / "ranking.json"
    toy = [
        *TOY_STUDY,
        "verify.schedule.iters=2",
        "serial.n_rounds=0",
        "parallel.max_trials=1",
        "search.wait_seconds=0.1",
    ]
    args = [
        *("--trial-iters", "2", "3", "--candidates", "2", "--repeats", "2", "--bootstrap", "20"),
        *sets(toy),
        *("--workdir", str(tmp_path / "work"), "--out", str(out)),
    ]
    result = result_of(run_script("ranking.py", *args, timeout=400), out, "ranking")
    assert result["complete"] is True
    assert result["settings"]["retrain"]["seeds"] == [1000, 1001]
    assert result["settings"]["retrain"]["verify_schedule"]["iters"] == 2
    # Keyed on the user's overrides alone: another --candidates reuses the retrains.
    assert result["settings"]["retrain"]["overrides"] == toy
    assert set(result["trial_lengths"]) == {"2", "3"}
    codes = set()
    for entry in result["trial_lengths"].values():
        assert entry["round"] == 1
        networks = entry["networks"]
        roles = [role for n in networks for role in n["roles"]]
        # The serial round's control (not the parallel phase's), its candidates, its best.
        assert "round 1 control" in roles and "round 1 best" in roles
        assert 1 <= roles.count("round 1 candidate") <= 2
        assert all(n["parallel"] is None for n in networks)
        for network in networks:
            assert finite(network["search_value"])
            assert len(network["retrained"]) == 2 and all(finite(v) for v in network["retrained"])
            codes.add(network["arch"])
        assert entry["ranked_networks"] == len(networks) and entry["enough_networks"] is False
        tau = entry["kendall_tau"]
        assert tau is None or -1 <= tau <= 1
        assert "kendall_tau_ci95" in entry and "kendall_tau_round" in entry
    # A network both searches found (at least the seed, the control) is retrained once.
    assert set(result["retrains"]) == codes
    # Resumed: the finished searches and the retrains are reused, nothing is trained again.
    resumed = run_script("ranking.py", *args, "--resume", timeout=400)
    again = result_of(resumed, out, "ranking")
    assert again["retrains"] == result["retrains"]
    assert again["trial_lengths"] == result["trial_lengths"]
    assert "Starting training" not in resumed.stdout + resumed.stderr


def test_ranking_tau_and_bootstrap_interval() -> None:
    """The statistics of ``ranking.py`` on networks whose ranks are known."""
    ranking = benchmark_module("ranking")

    def nets(search: list[float], retrained: list[float]) -> list[dict[str, Any]]:
        return [
            {"search_value": s, "retrained_mean": r, "in_round": True}
            for s, r in zip(search, retrained, strict=True)
        ]

    agree = ranking.ranked(nets(list(range(12)), list(range(12))), 200, 0)
    assert agree["tau"] == 1 and agree["ci95"] == [1, 1] and agree["networks"] == 12
    assert ranking.ranked(nets(list(range(12)), list(range(12, 0, -1))), 200, 0)["tau"] == -1
    # One swapped neighbour pair of 12: τ = (65 − 1) / 66; resampling can only widen it.
    swapped = ranking.ranked(nets(list(range(12)), [1, 0, *range(2, 12)]), 500, 0)
    assert swapped["tau"] == pytest.approx(64 / 66)
    low, high = swapped["ci95"]
    assert low < swapped["tau"] <= high == 1
    # No retrain measured yet: nothing to rank.
    assert ranking.ranked([{"search_value": 1.0, "in_round": True}], 10, 0)["tau"] is None


def test_ranking_merges_the_retrains_of_runs_with_the_same_retrain_settings(
    tmp_path: Path,
) -> None:
    """``--resume --retrains-from``: retrains of files with equal retrain settings (the 150- and
    450-iteration runs of one profile) are merged seed by seed; a file whose retrains ran on
    another thread count (other APs for the same seed) is not reused."""
    ranking = benchmark_module("ranking")
    settings = {"retrain": {"profile": "small-objects", "seeds": [1000, 1001], "torch_threads": 1}}
    run = {"ap": 25.88, "seconds": 135.0}
    files = {
        "a.json": (settings, {"BB(11,d1,d1,d1)": {"1000": run}}),
        "b.json": (settings, {"BB(11,d1,d1,d1)": {"1001": run}, "BB(11d,1d,1d,1)": {"1000": run}}),
        "two-threads.json": (
            {"retrain": {**settings["retrain"], "torch_threads": 2}},
            {"BB(1,1,1,1)": {"1000": run}},
        ),
    }
    for name, (their_settings, retrains) in files.items():
        (tmp_path / name).write_text(json.dumps({"settings": their_settings, "retrains": retrains}))
    merged = ranking.load_retrains([tmp_path / name for name in (*files, "missing.json")], settings)
    assert merged == {
        "BB(11,d1,d1,d1)": {"1000": run, "1001": run},
        "BB(11d,1d,1d,1)": {"1000": run},
    }


def test_ranking_combines_trial_lengths_run_apart(tmp_path: Path) -> None:
    """``--combine``: runs of one trial length each, retrained alike, become one result with
    both lengths and their retrains merged; runs that retrained otherwise, measured the same
    length or disagree on a shared retrain are refused, naming the file."""
    ranking = benchmark_module("ranking")
    retrain = {"profile": "small-objects", "seeds": [1000], "torch_threads": 1}
    run = {"ap": 25.88, "seconds": 135.0}

    def write(name: str, iters: str, retrains: dict[str, Any], **settings: Any) -> Path:
        path = tmp_path / name
        entry = {"kendall_tau": 0.5, "networks": []}
        path.write_text(
            json.dumps(
                {
                    "measured_at": f"when {name}",
                    "complete": True,
                    "settings": {
                        "retrain": retrain,
                        "data": {"val_images": 400},
                        "bootstrap": 2000,
                        "candidates_per_round": 13,
                        **settings,
                    },
                    "trial_lengths": {iters: entry},
                    "retrains": retrains,
                    "wall_s": 10.0,
                }
            )
        )
        return path

    short = write("150.json", "150", {"BB(11,d1,d1,d1)": {"1000": run}})
    long = write(
        "450.json", "450", {"BB(11,d1,d1,d1)": {"1000": run}, "BB(1,1,1,1)": {"1000": run}}
    )
    both = ranking.combined([short, long])
    assert set(both["trial_lengths"]) == {"150", "450"}
    assert both["trial_lengths"]["450"]["measured_at"] == "when 450.json"
    assert both["settings"]["trial_iters"] == [150, 450]
    assert both["settings"]["combined_from"] == ["150.json", "450.json"]
    assert both["retrains"] == {"BB(11,d1,d1,d1)": {"1000": run}, "BB(1,1,1,1)": {"1000": run}}
    assert both["complete"] is True and both["wall_s"] == 20.0

    threads = write("threads.json", "450", {}, retrain={**retrain, "torch_threads": 2})
    with pytest.raises(SystemExit, match=r"threads\.json: settings\.retrain differs"):
        ranking.combined([short, threads])
    with pytest.raises(SystemExit, match="trial length 150 is in an earlier file"):
        ranking.combined([short, write("again.json", "150", {})])
    other = write("other.json", "450", {"BB(11,d1,d1,d1)": {"1000": {**run, "ap": 23.55}}})
    with pytest.raises(SystemExit, match=r"other\.json: BB\(11,d1,d1,d1\) seed 1000"):
        ranking.combined([short, other])


def _processes_mentioning(marker: str) -> list[str]:
    """Processes whose command line or environment holds ``marker`` (this one excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.mark.postgres
def test_scaling() -> None:
    """Two worker counts through the storage proxy on the script's own PostgreSQL server; the
    server, the proxy and the workers are all gone when it ends."""
    from spnas.testing.postgres import find_pg_bin_dir

    pytest.importorskip("grpc", reason="the storage proxy needs grpcio")
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2")
    if find_pg_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found in CI")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    # The script's temporary files (the server's cluster among them) go under a directory of
    # this test, whose name then marks every process it started: the server's command line
    # holds it, the proxy's and the workers' environment (TMPDIR) too. Not under tmp_path:
    # as root the server runs as ``postgres``, which must reach its directory.
    marker = tempfile.mkdtemp(prefix="spnas-bench-scaling-", dir="/tmp")
    os.chmod(marker, 0o755)
    try:
        out = Path(marker) / "scaling.json"
        run = run_script(
            "scaling.py",
            *("--workers", "1", "2", "--trial-seconds", "0.2", "--trials-per-worker", "1"),
            *("--out", str(out)),
            env={"TMPDIR": marker},
            timeout=300,
        )
        result = result_of(run, out, "scaling")
        deadline = time.monotonic() + 15
        while (left := _processes_mentioning(marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], "processes left running:\n" + "\n".join(left)
    finally:
        shutil.rmtree(marker, ignore_errors=True)
    assert result["proxy_threads"] == 16  # --storage grpc, the default
    assert [row["workers"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["serial_trials"] == row["workers"]
        assert positive(row["trials_per_min"]) and positive(row["window_s"])
        assert positive(row["decision_ms_p50"]) and row["decisions_measured"] >= 1
        assert 1 <= row["max_server_connections"] <= 100
        assert positive(row["proxy_cpu_ms_per_trial"])
    assert result["rows"][0]["efficiency"] == 1.0
    assert positive(result["rows"][1]["efficiency"])
    assert isinstance(result["meets_target"], bool)


@pytest.mark.slow
def test_gpu_check(tmp_path: Path) -> None:
    """Without CUDA the check exits with code 2 and says why, writing nothing; the throughput
    part then runs on the CPU at 32x32 (``--device cpu``), AMP as bfloat16 autocast, whose
    training steps this CPU runs 5-11x slower than float32 (up to 22 s a step at 64x64)."""
    import torch

    out = tmp_path / "gpu_check.json"
    if not torch.cuda.is_available():
        run = run_script("gpu_check.py", "--skip-search", "--out", str(out), timeout=120)
        assert run.returncode == 2, run.stderr[-3000:]
        assert "no CUDA device visible" in run.stderr and "has not run" in run.stderr
        assert not out.exists()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = run_script(
        "gpu_check.py",
        *("--device", device, "--skip-search", "--size", "32x32"),
        *("--iters", "1", "--warmup", "0", "--out", str(out)),
    )
    result = result_of(run, out, "gpu_check")
    assert result["device"] == device
    assert result["image_size"] == [32, 32]
    assert set(result["throughput"]) == {"fp32", "amp"}
    for row in result["throughput"].values():
        assert positive(row["ratio"])
        for model in (row["spnet_r50"], row["detectron2_r50_fpn"]):
            assert positive(model["images_per_s"]) and finite(model["final_loss"])
            assert (model["peak_memory_gib"] is None) == (device == "cpu")
    assert "smoke_search" not in result
