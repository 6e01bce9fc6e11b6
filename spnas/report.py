"""Figures of a search, for optuna-dashboard (and reports).

- :func:`trajectory_figure` — every trial's value by trial number, the best so far, and the
  phases (paper Fig. 3);
- :func:`stage_flops_figure` — how the best networks spend their GMACs per stage (Fig. 4b);
- :func:`ap_vs_gmacs_figure` — value against cost of every candidate (Fig. 5a);
- :func:`verification_figure` — search value against the value retrained from scratch of the
  verified networks (Fig. 4a), once verification ran;
- :func:`param_importances_figure` — Optuna's importance of the architecture params
  (``blocks``, ``blocks_sI``, ``subnets_sI``, ``gmacs``…) for the value, in reports;
- :class:`DashboardFigures` — an Optuna callback that keeps them up to date in a worker
  (``spnas worker`` passes it to :func:`~spnas.search.run_worker`); the markdown note of each
  trial is :func:`spnas.search.trial_note`, written by the objective.

:func:`publish_to_dashboard` stores the figures in the study with
``optuna_dashboard.save_plotly_graph_object`` under fixed ids, so each call replaces them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from spnas._io import atomic_write
from spnas._optional import require
from spnas.search import CONFIG_ATTR, Decision, SearchConfig, SearchState, TrialKind, summarize

if TYPE_CHECKING:
    from spnas.modeling.flops import CostReport

_logger = logging.getLogger(__name__)

#: Colours of the trial kinds, shared by every figure.
KIND_COLOURS: dict[TrialKind, str] = {
    TrialKind.SEED: "#7f7f7f",
    TrialKind.SERIAL: "#1f77b4",
    TrialKind.REIGNITE: "#d62728",
    TrialKind.PARALLEL_SEED: "#9467bd",
    TrialKind.PARALLEL: "#2ca02c",
    TrialKind.CONTROL: "#17becf",
    TrialKind.FINAL: "#ff7f0e",
}
FIGURE_IDS: dict[str, str] = {
    "trajectory": "spnas-trajectory",
    "stage_flops": "spnas-stage-flops",
    "ap_vs_gmacs": "spnas-ap-vs-gmacs",
    "verification": "spnas-verification",
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
                name=kind.value,
                marker={"color": colour, "size": 9},
                text=[f"{p[2]} {p[3] or ''}" for p in points],
                hovertemplate="trial %{x}: %{y:.2f}<br>%{text}<extra>" + kind.value + "</extra>",
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
    seeds = state.of_kind(TrialKind.SEED)
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

    size = (config.schedule.min_size, config.schedule.min_size)
    figure = go.Figure()
    for label, (arch, parallel) in _best_networks(trials, config):
        report = _cost(
            str(arch),
            None if parallel is None else str(parallel),
            config.model.width,
            config.model.stem,
            size[0],
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


# Counting a network's FLOPs builds and traces it (about half a second each); workers redraw
# the figures again and again while the best networks rarely change.
@functools.lru_cache(maxsize=256)
def _cost(arch: str, parallel: str | None, width: int, stem: str, size: int) -> CostReport:
    from spnas.modeling.flops import cost

    return cost(arch, parallel, base_width=width, stem=stem, input_size=(size, size))


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
                name=kind.value,
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


def verification_figure(verify: Mapping[str, Any], metric: str) -> Any:
    """Search value against the value retrained from scratch, mean ± std over the repeats, of
    every verified network (paper Fig. 4a); the title carries Kendall τ and the verdict."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for network in verify["networks"]:
        if network["mean"] is None or network["search_ap"] is None:
            continue
        code = network["arch"] + (f" {network['parallel']}" if network["parallel"] else "")
        figure.add_trace(
            go.Scatter(
                x=[network["search_ap"]],
                y=[network["mean"]],
                error_y={"type": "data", "array": [network["std"] or 0.0], "visible": True},
                mode="markers+text",
                name=network["role"],
                text=[network["role"]],
                textposition="top center",
                marker={"size": 11},
                hovertemplate=f"{code}<br>search %{{x:.2f}}, retrained %{{y:.2f}}<extra></extra>",
            )
        )
    tau = verify["kendall_tau"]
    figure.update_layout(
        title={
            "text": f"Search against retraining from scratch (Kendall τ "
            f"{'n/a' if tau is None else f'{tau:.2f}'})<br><sup>{verify['verdict']}</sup>",
            "font": {"size": 14},
        },
        xaxis_title=f"search {metric}",
        yaxis_title=f"retrained {metric} (mean ± std)",
    )
    return figure


def publish_to_dashboard(study: optuna.Study, config: SearchConfig) -> None:
    """Store (replace) the search's figures in ``study`` for optuna-dashboard.

    Raises:
        MissingDependencyError: naming the ``spnas[dashboard]`` extra when optuna-dashboard
            or plotly is not installed.
    """
    require("plotly", package="plotly", extra="dashboard", purpose="the dashboard figures")
    dashboard = require(
        "optuna_dashboard",
        package="optuna-dashboard",
        extra="dashboard",
        purpose="the dashboard figures",
    )
    figures = report_figures(study.get_trials(deepcopy=False), config)
    for name, figure in figures.items():
        dashboard.save_plotly_graph_object(study, figure, graph_object_id=FIGURE_IDS[name])


#: Seconds between two refreshes of the dashboard figures by one worker.
FIGURE_REFRESH_S = 60.0


class DashboardFigures:
    """Optuna callback: refresh the study's figures in optuna-dashboard after a completed
    trial, at most once per :data:`FIGURE_REFRESH_S` in each worker (the first time that long
    after it started), and once more when the search is done.

    Building the figures takes a second or more of CPU (the FLOPs of the best networks); with
    many workers on few cores, refreshing after every trial slowed the search itself. A
    failure to draw is logged, never raised: figures are a convenience.

    Args:
        config: the search configuration; by default read from the study (``spnas:config``).
    """

    def __init__(self, config: SearchConfig | None = None) -> None:
        self.config = config
        self._last = time.monotonic()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE:
            return
        config = self.config_for(study)
        done = SearchState.from_trials(study.get_trials(deepcopy=False), config).done
        if done or time.monotonic() - self._last >= FIGURE_REFRESH_S:
            self.publish(study)

    def config_for(self, study: optuna.Study) -> SearchConfig:
        if self.config is None:
            self.config = SearchConfig.from_dict(study.user_attrs[CONFIG_ATTR])
        return self.config

    def publish(self, study: optuna.Study) -> None:
        self._last = time.monotonic()
        try:
            publish_to_dashboard(study, self.config_for(study))
        except Exception as exc:
            _logger.warning("dashboard figures not updated (%s: %s)", type(exc).__name__, exc)


#: The files :func:`write_report` writes, besides ``index.html``.
REPORT_IMAGES: dict[str, str] = {
    "trajectory": "trajectory.png",
    "stage_flops": "stage_flops.png",
    "ap_vs_gmacs": "ap_vs_gmacs.png",
    "verification": "verification.png",
}
#: Where Debian's ``chromium`` package puts the browser; kaleido is pointed at it.
SYSTEM_CHROMIUM = "/usr/bin/chromium"


def report_figures(trials: Sequence[FrozenTrial], config: SearchConfig) -> dict[str, Any]:
    """The search figures, by name (keys of :data:`REPORT_IMAGES`); ``verification`` only
    once verification trials exist."""
    figures = {
        "trajectory": trajectory_figure(trials, config),
        "stage_flops": stage_flops_figure(trials, config),
        "ap_vs_gmacs": ap_vs_gmacs_figure(trials, config),
    }
    verify = summarize(trials, config)["verify"]
    if verify is not None:
        figures["verification"] = verification_figure(verify, config.data.metric)
    return figures


def param_importances_figure(study: optuna.Study) -> Any | None:
    """``optuna.visualization.plot_param_importances`` of ``study``, or ``None`` when fewer
    than two completed trials carry the architecture params (studies written before spnas
    recorded them) or their values do not vary."""
    import logging
    import warnings

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if sum("blocks" in t.params for t in completed) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.visualization.plot_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. no param varies
        logging.getLogger(__name__).info("no param importances: %s", exc)
        return None


def write_pngs(
    figures: Sequence[Any], paths: Sequence[Any], *, width: int = 900, height: int = 600
) -> None:
    """Render ``figures`` to PNG ``paths`` with kaleido and the machine's Chromium (one browser).

    kaleido never downloads a browser here: it uses ``BROWSER_PATH`` when set, else Debian's
    ``/usr/bin/chromium`` (``tools/install_chromium.sh``), else the first Chromium on ``PATH``;
    without one it raises ``ChromeNotFoundError``.
    """
    import logging
    import os

    import plotly.io as pio

    # kaleido's browser driver logs every step at INFO: show that only with debug logging.
    if logging.getLogger().level > logging.DEBUG:
        for name in ("choreographer", "kaleido", "logistro"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
    if "BROWSER_PATH" not in os.environ and os.path.exists(SYSTEM_CHROMIUM):
        os.environ["BROWSER_PATH"] = SYSTEM_CHROMIUM
    pio.write_images(
        list(figures), [str(p) for p in paths], format="png", width=width, height=height
    )


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from html import escape

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3f}"
        return escape(str(value))

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(
    study: optuna.Study,
    config: SearchConfig,
    figures: Mapping[str, Any],
    *,
    phases: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """A self-contained HTML summary: best networks, phase rows (Table 6), trials, figures.

    plotly.js is embedded once, inline (no CDN: the report opens without a network).
    ``phases`` are the rows of ``spnas status`` (``summarize(...)["phases"]``); without them the
    section is left out.
    """
    from html import escape

    import plotly.io as pio

    trials = study.get_trials(deepcopy=False)
    metric = config.data.metric
    state = SearchState.from_trials(trials, config)
    seeds = state.of_kind(TrialKind.SEED)
    sources: dict[str, Any] = {
        "seed": seeds[0] if seeds else None,
        "best serial": state.best_serial,
        "best parallel": state.best_parallel,
    }
    best_rows = []
    for label, (arch, parallel) in _best_networks(trials, config):
        source = sources.get(label)
        best_rows.append(
            (
                label,
                str(arch),
                None if parallel is None else str(parallel),
                None if source is None else source.value,
                None if source is None else source.number,
            )
        )
    trial_rows = []
    for trial in trials:
        decision = Decision.of(trial)
        if decision is None or decision.kind == TrialKind.IDLE:
            continue
        trial_rows.append(
            (
                trial.number,
                decision.kind.value,
                trial.state.name,
                decision.round,
                None if decision.arch is None else str(decision.arch),
                None if decision.parallel is None else str(decision.parallel),
                trial.value,
                trial.user_attrs.get("gmacs"),
            )
        )
    sections = [
        f"<h1>SP-NAS search {escape(study.study_name)}</h1>",
        f"<p>phase <b>{escape(state.phase)}</b>, {len(trial_rows)} trial(s), "
        f"metric {escape(metric)} ({escape(config.direction)})</p>",
        "<h2>Best networks</h2>",
        _html_table(["network", "architecture", "parallel", metric, "trial"], best_rows),
    ]
    if phases is not None:
        sections += [
            "<h2>Phases</h2>",
            _html_table(
                ["phase", f"best {metric}", "trials"],
                [(row["phase"], row["best"], row["trials"]) for row in phases],
            ),
        ]
    verify = summarize(trials, config)["verify"]
    if verify is not None:
        sections += _verification_html(verify, metric)
    sections += [
        "<h2>Trials</h2>",
        _html_table(
            ["#", "kind", "state", "round", "architecture", "parallel", metric, "GMACs"],
            trial_rows,
        ),
        "<h2>Figures</h2>",
    ]
    for index, (name, figure) in enumerate(figures.items()):
        sections.append(
            pio.to_html(
                figure,
                full_html=False,
                include_plotlyjs=index == 0,
                div_id=f"spnas-{name}",
            )
        )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>SP-NAS {escape(study.study_name)}</title><style>{style}</style></head>"
        "<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _verification_html(verify: Mapping[str, Any], metric: str) -> list[str]:
    from html import escape

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    rows = [
        (
            n["role"],
            n["arch"],
            n["parallel"],
            n["search_ap"],
            f"{fmt(n['mean'])} ± {fmt(n['std'])}",
            " ".join(fmt(v) for v in n["retrained_ap"]),
        )
        for n in verify["networks"]
    ]
    tau = verify["kendall_tau"]
    return [
        "<h2>Verification: retrained from scratch at equal training</h2>",
        f"<p><b>{escape(verify['verdict'])}</b></p>",
        f"<p>Kendall τ between search and retrained {escape(metric)}: {fmt(tau)}</p>",
        _html_table(
            ["network", "architecture", "parallel", f"search {metric}", "retrained", "repeats"],
            rows,
        ),
    ]


def write_report(
    study: optuna.Study,
    config: SearchConfig,
    out_dir: Any,
    *,
    phases: Sequence[Mapping[str, Any]] | None = None,
) -> list[Any]:
    """Write the figures (and the param importances, when the study has them) as PNGs and
    ``index.html`` into ``out_dir``; return the paths.

    Raises:
        MissingDependencyError: naming the ``spnas[report]`` extra when plotly or kaleido is
            not installed.
    """
    from pathlib import Path

    for module in ("plotly", "kaleido"):
        require(module, package=module, extra="report", purpose="spnas report")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = report_figures(study.get_trials(deepcopy=False), config)
    images = {name: REPORT_IMAGES[name] for name in REPORT_IMAGES if name in figures}
    importances = param_importances_figure(study)
    if importances is not None:
        figures["param_importances"] = importances
        images["param_importances"] = "param_importances.png"
    paths = [out / filename for filename in images.values()]
    write_pngs([figures[name] for name in images], paths)
    index = out / "index.html"
    html = report_html(study, config, figures, phases=phases)
    atomic_write(index, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    paths.append(index)
    return paths
