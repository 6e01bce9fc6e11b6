"""Figures of a search, for optuna-dashboard (and reports).

- :func:`trajectory_figure` — every trial's value by trial number, the best so far, and the
  phases (paper Fig. 3);
- :func:`stage_flops_figure` — how the best networks spend their GMACs per stage (Fig. 4b);
- :func:`ap_vs_gmacs_figure` — value against cost of every candidate (Fig. 5a);
- :func:`trial_note` — the markdown note each trial carries in the dashboard.

:func:`publish_to_dashboard` stores the figures in the study with
``optuna_dashboard.save_plotly_graph_object`` under fixed ids, so each call replaces them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from spnas.search._config import SearchConfig
from spnas.search._state import Decision, SearchState

#: Colours of the trial kinds, shared by every figure.
KIND_COLOURS: dict[str, str] = {
    "seed": "#7f7f7f",
    "serial": "#1f77b4",
    "reignite": "#d62728",
    "parallel_seed": "#9467bd",
    "parallel": "#2ca02c",
    "final": "#ff7f0e",
}
FIGURE_IDS: dict[str, str] = {
    "trajectory": "spnas-trajectory",
    "stage_flops": "spnas-stage-flops",
    "ap_vs_gmacs": "spnas-ap-vs-gmacs",
}


def _completed(trials: Sequence[FrozenTrial]) -> list[tuple[FrozenTrial, Decision]]:
    rows = []
    for trial in trials:
        decision = Decision.of(trial)
        if trial.state == TrialState.COMPLETE and decision is not None and trial.value is not None:
            rows.append((trial, decision))
    return rows


def trajectory_figure(trials: Sequence[FrozenTrial], config: SearchConfig) -> Any:
    """Value of every completed trial by trial number, with the best so far (paper Fig. 3)."""
    import plotly.graph_objects as go

    rows = _completed(trials)
    figure = go.Figure()
    for kind, colour in KIND_COLOURS.items():
        points = [(t.number, t.value, str(d.arch), d.parallel) for t, d in rows if d.kind == kind]
        if not points:
            continue
        figure.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="markers",
                name=kind,
                marker={"color": colour, "size": 9},
                text=[f"{p[2]} {p[3] or ''}" for p in points],
                hovertemplate="trial %{x}: %{y:.2f}<br>%{text}<extra>" + kind + "</extra>",
            )
        )
    better = max if config.direction == "maximize" else min
    best: float | None = None
    xs, ys = [], []
    for trial, _ in rows:
        best = trial.value if best is None else better(best, trial.value)
        xs.append(trial.number)
        ys.append(best)
    figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="best so far", line={"shape": "hv"}))
    figure.update_layout(
        title="SP-NAS search trajectory",
        xaxis_title="trial",
        yaxis_title=config.data.metric,
    )
    return figure


def _best_networks(trials: Sequence[FrozenTrial], config: SearchConfig) -> list[tuple[str, Any]]:
    state = SearchState.from_trials(trials, config)
    networks: list[tuple[str, Any]] = []
    seeds = state.of_kind("seed")
    if seeds and seeds[0].decision.arch is not None:
        networks.append(("seed", (seeds[0].decision.arch, None)))
    if state.best_serial is not None:
        networks.append(("best serial", (state.best_serial.arch, None)))
    if state.best_parallel is not None:
        networks.append(("best parallel", (state.best_parallel.arch, state.best_parallel.parallel)))
    return networks


def stage_flops_figure(trials: Sequence[FrozenTrial], config: SearchConfig) -> Any:
    """Per-stage GMACs of the seed, the best SerialNet and the best SPNet (paper Fig. 4b)."""
    import plotly.graph_objects as go

    from spnas.modeling.flops import cost

    size = (config.schedule.min_size, config.schedule.min_size)
    figure = go.Figure()
    for label, (arch, parallel) in _best_networks(trials, config):
        report = cost(
            arch, parallel, base_width=config.model.width, stem=config.model.stem, input_size=size
        )
        names = ["stem", *(s.name for s in report.stages)]
        values = [report.stem_gmacs, *(s.gmacs for s in report.stages)]
        code = f"{arch}" + (f" {parallel}" if parallel else "")
        figure.add_trace(go.Bar(x=names, y=values, name=f"{label}: {code}"))
    figure.update_layout(
        title=f"GMACs per stage at {size[0]}×{size[1]}",
        barmode="group",
        yaxis_title="GMACs",
    )
    return figure


def ap_vs_gmacs_figure(trials: Sequence[FrozenTrial], config: SearchConfig) -> Any:
    """Value against GMACs of every completed candidate (paper Fig. 5a)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    rows = [(t, d) for t, d in _completed(trials) if t.user_attrs.get("gmacs") is not None]
    for kind, colour in KIND_COLOURS.items():
        points = [(t, d) for t, d in rows if d.kind == kind]
        if not points:
            continue
        figure.add_trace(
            go.Scatter(
                x=[t.user_attrs["gmacs"] for t, _ in points],
                y=[t.value for t, _ in points],
                mode="markers",
                name=kind,
                marker={"color": colour, "size": 9},
                text=[f"#{t.number} {d.arch} {d.parallel or ''}" for t, d in points],
                hovertemplate="%{x:.3f} GMACs: %{y:.2f}<br>%{text}<extra></extra>",
            )
        )
    figure.update_layout(
        title=f"{config.data.metric} against cost",
        xaxis_title="GMACs",
        yaxis_title=config.data.metric,
    )
    return figure


def trial_note(decision: Decision, attrs: Mapping[str, Any], value: float | None) -> str:
    """The markdown note of one trial: what it trained, from what, and how it did."""

    def fmt(x: Any, digits: int = 2) -> str:
        return "—" if x is None else f"{x:.{digits}f}"

    lines = [f"### {decision.kind}" + (f" (round {decision.round})" if decision.round else "")]
    lines.append(f"- **architecture**: `{decision.arch}`")
    if decision.parallel is not None:
        lines.append(f"- **parallel**: `{decision.parallel}`")
    if decision.parent is not None:
        lines.append(f"- **parent**: trial {decision.parent}")
    if decision.ops:
        lines.append("- **ops**: " + ", ".join(f"`{op}`" for op in decision.ops))
    lines.append(
        f"- **value**: {fmt(value)}; AP {fmt(attrs.get('AP'))}, AP50 {fmt(attrs.get('AP50'))}"
    )
    lines.append(
        f"- **cost**: {fmt(attrs.get('gmacs'), 3)} GMACs, {fmt(attrs.get('params_m'))} M parameters"
    )
    if attrs.get("inherited_fraction") is not None:
        lines.append(f"- **inherited**: {attrs['inherited_fraction']:.1%} of parameters")
    if attrs.get("train_s") is not None:
        lines.append(f"- **training**: {attrs['train_s']:.0f} s")
    return "\n".join(lines)


def publish_to_dashboard(study: optuna.Study, config: SearchConfig) -> None:
    """Store (replace) the three figures in ``study`` for optuna-dashboard."""
    from optuna_dashboard import save_plotly_graph_object

    trials = study.get_trials(deepcopy=False)
    figures = {
        "trajectory": trajectory_figure(trials, config),
        "stage_flops": stage_flops_figure(trials, config),
        "ap_vs_gmacs": ap_vs_gmacs_figure(trials, config),
    }
    for name, figure in figures.items():
        save_plotly_graph_object(study, figure, graph_object_id=FIGURE_IDS[name])
