"""One pure summary of a search, read by ``spnas status``, the report and the dashboard.

:func:`summarize` turns a study's trials into plain data (JSON-ready: non-finite numbers are
``None``): the phase, the best networks, the rows of the paper's Table 6, each round's noise
(σ_trial of its control repeats) against the spread of its candidates, every trial, and —
once verification trials exist — :func:`verification_summary`: each verified network's search
value against its values retrained from scratch (paper Fig. 4a), the gain of the searched
network over the seed at equal training with its paired 95 % interval, and the rank agreement
(Kendall τ). A repeat whose training diverged is a failed repeat: it has no value, the
network's row lists it, and the verdict says how many repeats of which network diverged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial

from spnas.search._state import (
    UNTRAINED_KINDS,
    Best,
    Decision,
    Divergence,
    Record,
    SearchState,
    TrialKind,
    verification_plan,
)
from spnas.search._stats import noise_sigma, paired_interval


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _code(arch: Any, parallel: Any) -> str:
    return f"{arch}" + (f" {parallel}" if parallel is not None else "")


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's τ-b of two paired sequences (ties counted); ``None`` when undefined."""
    n = len(xs)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def verification_summary(state: SearchState) -> dict[str, Any] | None:
    """Retrained values of the verified networks and what they say; ``None`` before
    verification started.

    ``gain_over_seed`` is the searched network's (the best SPNet, else the last round's best)
    retrained value minus the seed's, paired by repeat (same seed), signed so that a positive
    gain is better whatever the metric's direction, with ``ci95``, its paired 95 % *t* interval
    (:func:`~spnas.search.paired_interval`); ``beats_seed`` says whether that interval lies
    above zero. A search that kept the seed (no candidate was accepted) has a gain of exactly
    0 with ``same_network`` true: its pick is the seed's retrained network itself.
    """
    records = [r for r in state.records if r.decision.kind == TrialKind.VERIFY]
    if not records:
        return None
    config = state.config
    sign = 1.0 if config.direction == "maximize" else -1.0
    repeats = config.verify.repeats
    networks = []
    by_role: dict[str, dict[int, float]] = {}
    for role, best in verification_plan(state):
        key = (str(best.arch), None if best.parallel is None else str(best.parallel))
        mine = [r for r in records if r.decision.candidate == key and r.decision.repeat is not None]
        values = {r.decision.repeat: r.value for r in mine if r.value is not None}
        by_role[role] = values
        mean, std = _mean_std(list(values.values()))
        row = _network_row(role, best, values, mean, std, repeats)
        row["diverged"] = _diverged_repeats(mine, values)
        networks.append(row)
    finished = sum(1 for r in records if r.finished)
    summary: dict[str, Any] = {
        "networks": networks,
        "repeats": repeats,
        "trials_finished": finished,
        "complete": state.phase in ("final", "done"),
        "gain_over_seed": None,
        "beats_seed": None,
        "kendall_tau": None,
        "verdict": "verification is running",
    }
    ranked = [n for n in networks if n["mean"] is not None and n["search_ap"] is not None]
    if len(ranked) >= 2:
        summary["kendall_tau"] = kendall_tau(
            [n["search_ap"] for n in ranked], [n["mean"] for n in ranked]
        )
    searched = [n for n in networks if n["role"] != "seed"]
    seed = by_role.get("seed", {})
    if searched and seed:
        target = searched[-1]
        paired = [
            sign * (by_role[target["role"]][k] - seed[k])
            for k in sorted(seed)
            if k in by_role[target["role"]]
        ]
        gain, gain_std = _mean_std(paired)
        _, seed_std = _mean_std(list(seed.values()))
        summary["gain_over_seed"] = {
            "network": target["role"],
            "arch": target["arch"],
            "parallel": target["parallel"],
            "mean": gain,
            "std": gain_std,
            "n": len(paired),
            "ci95": paired_interval(paired),
            "seed_std": seed_std,
            "same_network": False,
        }
        if gain is not None:
            ci95 = summary["gain_over_seed"]["ci95"]
            summary["beats_seed"] = None if ci95 is None else ci95[0] > 0
            summary["verdict"] = _verdict(summary["gain_over_seed"], config.data.metric)
    elif not searched and seed and summary["complete"]:
        summary["gain_over_seed"] = _kept_seed(networks[0], seed)
        summary["beats_seed"] = False
        summary["verdict"] = (
            f"the search kept the seed {_code(networks[0]['arch'], networks[0]['parallel'])}: "
            f"its pick is the seed itself, so it gains nothing (+0.00 {config.data.metric} "
            f"over {len(seed)} seeds, by construction)"
        )
    gain = summary["gain_over_seed"]
    if summary["complete"] and (gain is None or gain["mean"] is None):
        summary["verdict"] = _no_verdict(networks, config.data.metric)
    diverged = _divergence_note(networks)
    if diverged:
        summary["verdict"] += "; " + diverged
    if not summary["complete"]:
        summary["verdict"] = "verification is running: " + summary["verdict"]
    return summary


def _kept_seed(row: dict[str, Any], seed: dict[int, float]) -> dict[str, Any]:
    """``gain_over_seed`` of a search whose pick is the seed: the same retrained network on
    both sides, so every paired difference is 0 (not "unknown": the search added nothing)."""
    _, seed_std = _mean_std(list(seed.values()))
    return {
        "network": "seed",
        "arch": row["arch"],
        "parallel": row["parallel"],
        "mean": 0.0,
        "std": 0.0,
        "n": len(seed),
        "ci95": [0.0, 0.0],
        "seed_std": seed_std,
        "same_network": True,
    }


def _diverged_repeats(records: Sequence[Record], values: dict[int, float]) -> list[dict[str, Any]]:
    """The repeats of one network whose retraining diverged (and none completed): each
    ``{repeat, trial, seed, iteration, loss}``."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        repeat = record.decision.repeat
        if record.diverged is None or repeat is None or repeat in values or repeat in rows:
            continue
        rows[repeat] = {
            "repeat": repeat,
            "trial": record.number,
            "seed": record.diverged.seed,
            "iteration": record.diverged.iteration,
            "loss": _finite(record.diverged.loss),
        }
    return [rows[k] for k in sorted(rows)]


def _where(diverged: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"seed {d['seed']}" + ("" if d["iteration"] is None else f" at iteration {d['iteration']}")
        for d in diverged
    )


def _divergence_note(networks: Sequence[dict[str, Any]]) -> str:
    """``diverged: 3 of 3 repeats of spnet … (seed 0 at iteration 33, …)``, or ``""``."""
    parts = []
    for n in networks:
        diverged = n["diverged"]
        if not diverged:
            continue
        what = f"{len(diverged)} of {len(n['retrained_ap'])} repeats of {n['role']} "
        what += f"{_code(n['arch'], n['parallel'])} ({_where(diverged)})"
        if n["mean"] is None:
            what += ", so its retrained mean is undefined"
        parts.append(what)
    if not parts:
        return ""
    return "diverged, counted as failed repeats: " + "; ".join(parts)


def _no_verdict(networks: Sequence[dict[str, Any]], metric: str) -> str:
    """Why a finished verification cannot compare the searched network with the seed."""
    searched = [n for n in networks if n["role"] != "seed"]
    if not searched:
        return f"no verdict: the search kept the seed, and none of its retrains has a {metric}"
    target = searched[-1]
    seed = next((n for n in networks if n["role"] == "seed"), None)
    missing = [n for n in (seed, target) if n is not None and n["mean"] is None]
    if seed is None:
        return "no verdict: the seed has no search value to verify"
    if not missing:
        return (
            f"no verdict: no repeat of {target['role']} and the seed finished with the same "
            f"seed, so their {metric} cannot be paired"
        )
    return "no verdict: " + "; ".join(
        f"{n['role']} {_code(n['arch'], n['parallel'])} has no retrained {metric} "
        + (
            "(every repeat diverged)"
            if len(n["diverged"]) == len(n["retrained_ap"])
            else "(its repeats failed or diverged)"
        )
        for n in missing
    )


def _network_row(
    role: str,
    best: Best,
    values: dict[int, float],
    mean: float | None,
    std: float | None,
    repeats: int,
) -> dict[str, Any]:
    return {
        "role": role,
        "arch": str(best.arch),
        "parallel": None if best.parallel is None else str(best.parallel),
        "trial": best.number,
        "search_ap": _finite(best.value),
        "retrained_ap": [_finite(values.get(k)) for k in range(repeats)],
        "mean": _finite(mean),
        "std": _finite(std),
    }


def _verdict(gain: dict[str, Any], metric: str) -> str:
    """Whether the searched network beats the seed: its paired 95 % interval is above zero."""
    mean, std, n, ci95 = gain["mean"], gain["std"], gain["n"], gain["ci95"]
    what = f"{gain['network']} {_code(gain['arch'], gain['parallel'])}"
    if ci95 is None:
        return (
            f"{what}: gain over the seed {mean:+.2f} {metric} from {n} paired repeat(s); with "
            "one the spread is unknown, so this says nothing (set verify.repeats ≥ 3)"
        )
    measured = (
        f"{mean:+.2f} ± {std:.2f} {metric} over {n} seeds, "
        f"paired 95 % interval [{ci95[0]:+.2f}, {ci95[1]:+.2f}]"
    )
    if ci95[0] > 0:
        return f"{what} beats the seed at equal training: {measured}"
    return (
        f"{what} does NOT beat the seed at equal training (its paired 95 % interval is not "
        f"above zero): gain {measured}"
    )


def phase_table(state: SearchState) -> list[dict[str, Any]]:
    """Best value after the seed, each serial round, each reignition and the parallel phase
    (the shape of the paper's Table 6). A round's control counts in its round."""
    groups: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for record in state.records:
        d = record.decision
        if d.kind in UNTRAINED_KINDS or d.kind == TrialKind.VERIFY:
            continue
        if d.kind in (TrialKind.PARALLEL_SEED, TrialKind.PARALLEL) or (
            d.kind == TrialKind.CONTROL and d.parallel
        ):
            name = "parallel"
        elif d.kind in (TrialKind.SERIAL, TrialKind.CONTROL):
            name = f"serial round {d.round}"
        elif d.kind == TrialKind.REIGNITE:
            name = f"reignite {d.round}"
        else:
            name = d.kind.value
        counts[name] = counts.get(name, 0) + 1
        if record.value is not None:
            groups.setdefault(name, []).append(record.value)
    pick = max if state.direction == "maximize" else min
    return [
        {"phase": name, "best": pick(groups[name]) if name in groups else None, "trials": n}
        for name, n in counts.items()
    ]


def rounds_table(state: SearchState) -> list[dict[str, Any]]:
    """Each round's signal against its noise: per serial round (and the parallel phase,
    ``round`` ``"parallel"``) the control's repeats, σ_trial (``noise_sigma``: their standard
    deviation, ``None`` under two finished repeats or without controls), and the round's
    candidates: how many finished with a value, their spread (``std``), the best (first
    evaluations), the best's gain over the control's mean in units of σ_trial
    (``best_gain_in_sigma``, the round's signal-to-noise ratio; positive is better for
    minimised metrics too), and how many were re-evaluated as would-be winners."""
    sign = 1.0 if state.direction == "maximize" else -1.0
    groups: dict[str | int, tuple[list[float], list[Record]]] = {}
    for record in state.records:
        d = record.decision
        key: str | int
        if d.kind == TrialKind.CONTROL:
            key = "parallel" if d.parallel is not None else d.round
        elif d.kind in (TrialKind.SERIAL, TrialKind.PARALLEL):
            key = d.round if d.kind == TrialKind.SERIAL else "parallel"
        else:
            continue
        controls, candidates = groups.setdefault(key, ([], []))
        if d.kind != TrialKind.CONTROL:
            candidates.append(record)
        elif record.value is not None:
            controls.append(record.value)
    reevaluated = {r.decision.candidate for r in state.records if r.decision.repeat}
    rows = []
    for key, (controls, records) in groups.items():
        # A re-evaluation is a second value of its candidate, not another candidate.
        candidates = [r for r in records if not r.decision.repeat]
        values = [r.value for r in candidates if r.value is not None]
        sigma = noise_sigma(controls)
        control_mean = statistics.fmean(controls) if controls else None
        best = max(values, key=lambda v: sign * v) if values else None
        snr = None
        if best is not None and control_mean is not None and sigma:
            snr = sign * (best - control_mean) / sigma
        rows.append(
            {
                "round": key,
                "noise_sigma": _finite(sigma),
                "control": {"values": controls, "mean": _finite(control_mean)},
                "candidates": {
                    "count": len(values),
                    "trials": len(candidates),
                    "std": _finite(noise_sigma(values)),
                    "best": _finite(best),
                    "best_gain_in_sigma": _finite(snr),
                    "reevaluated": sum(
                        1 for r in candidates if r.decision.candidate in reevaluated
                    ),
                },
            }
        )
    return rows


def _trial_row(trial: FrozenTrial, decision: Decision) -> dict[str, Any]:
    row = {
        "number": trial.number,
        "kind": decision.kind.value,
        "state": trial.state.name,
        "round": decision.round,
        "arch": None if decision.arch is None else str(decision.arch),
        "parallel": None if decision.parallel is None else str(decision.parallel),
        "parent": decision.parent,
        "AP": _finite(trial.user_attrs.get("AP")),
        "value": _finite(trial.value),
        "gmacs": trial.user_attrs.get("gmacs"),
    }
    if decision.role is not None:
        row["role"] = decision.role
    if decision.role is not None or decision.repeat is not None:
        row["repeat"] = decision.repeat
    diverged = Divergence.of(trial)
    if diverged is not None:
        row["diverged"] = {
            "iteration": diverged.iteration,
            "loss": _finite(diverged.loss),
            "seed": diverged.seed,
        }
    return row


def summarize(trials: Sequence[FrozenTrial], config: Any, study: str = "") -> dict[str, Any]:
    """The search's state as plain data (what ``spnas status --json`` prints).

    Args:
        trials: the study's trials.
        config: its :class:`~spnas.search.SearchConfig`.
        study: the study name, repeated in the result.
    """
    state = SearchState.from_trials(trials, config)
    by_number = {t.number: t for t in trials}

    def best_entry(best: Best | None) -> dict[str, Any] | None:
        if best is None:
            return None
        entry: dict[str, Any] = {
            "arch": str(best.arch),
            "AP": _finite(by_number[best.number].user_attrs.get("AP")),
            "value": _finite(best.value),
        }
        if best.parallel is not None:
            entry["parallel"] = str(best.parallel)
        entry["trial"] = best.number
        return entry

    rows = []
    for trial in trials:
        decision = Decision.of(trial)
        if decision is not None and decision.kind != TrialKind.IDLE:
            rows.append(_trial_row(trial, decision))
    return {
        "study": study,
        "phase": state.phase,
        "done": state.done,
        "round": state.round,
        "metric": config.data.metric,
        "direction": config.direction,
        "comparison": config.search.comparison,
        "waiting_for": state.waiting_for,
        "reason": state.reason,
        "best": {
            "serial": best_entry(state.best_serial),
            "parallel": best_entry(state.best_parallel),
        },
        "phases": phase_table(state),
        "rounds": rounds_table(state),
        "verify": verification_summary(state),
        "trials": rows,
    }
