"""``spnas report`` on a hand-made history stored in a SQLite study."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import plotly.offline
import pytest
from PIL import Image

from spnas.cli import main
from spnas.search import Decision, SearchConfig

SEED = "BB(11,d1,d1,d1)"
CHILD = "BB(11,d11,d1,d1)"
PLOTLY_JS = plotly.offline.get_plotlyjs()


def make_study(path: Path, name: str) -> str:
    """A SQLite study holding a seed, two serial trials and a parallel one; returns its URL."""
    config = SearchConfig.from_dict(
        {
            "study": {"name": name},
            "model": {"seed_arch": SEED, "width": 8},
            "schedule": {"iters": 1, "min_size": 64},
        }
    )
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name=name, storage=url, direction=config.direction)
    study.set_user_attr("spnas:config", config.to_dict())
    history = [
        (Decision("seed", arch=SEED), 2.0, 0.10),
        (Decision("serial", arch=CHILD, parent=0, ops=("expand(s1,after=0)",), round=1), 5.0, 0.12),
        (Decision("serial", arch="BB(11,d1,d11,d1)", parent=0, round=1), 3.0, 0.12),
    ]
    for decision, value, gmacs in history:
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                system_attrs=decision.to_attrs(),
                user_attrs={"gmacs": gmacs, "AP": value, "params_m": 1.0},
            )
        )
    return url


def test_report_writes_pngs_and_a_self_contained_html(tmp_path: Path, capsys) -> None:
    url = make_study(tmp_path / "spnas.db", "report-study")
    out = tmp_path / "report"
    assert main(["report", "--study", "report-study", "--storage", url, "--out", str(out)]) == 0
    for name in ("trajectory.png", "stage_flops.png", "ap_vs_gmacs.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.width > 100 and image.height > 100
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colours is None or len(colours) > 1, f"{name} is a single colour"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert CHILD in html
    for phase in ("seed", "serial round 1"):
        assert f"<td>{phase}</td>" in html
    # plotly.js is inline: no script is loaded from anywhere (the inline bundle itself holds
    # dormant CDN URLs for map icons and geo data, which these figures never fetch).
    assert re.search(r"<script[^>]*\bsrc=", html) is None
    assert "https://cdn.plot.ly/plotly" not in html
    assert "https://cdn" not in html.replace(PLOTLY_JS, "")
    assert html.count("plotly.js v") >= 1 and html.count("Plotly.newPlot") == 3
    assert str(out / "index.html") in capsys.readouterr().out


def test_report_of_a_missing_study_is_a_config_error(tmp_path: Path, capsys) -> None:
    url = make_study(tmp_path / "spnas.db", "report-study")
    code = main(["report", "--study", "nope", "--storage", url, "--out", str(tmp_path / "x")])
    assert code == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_report_needs_its_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--study", "s", "--storage", "sqlite:///x.db"])
    # The storage may come from --storage, --storage-file or SPNAS_STORAGE: none is an error.
    monkeypatch.delenv("SPNAS_STORAGE", raising=False)
    assert main(["report", "--study", "s", "--out", "o"]) == 2
    assert "SPNAS_STORAGE" in capsys.readouterr().err


def make_verified_study(path: Path, name: str) -> str:
    """A finished study at equal training: seed, one round (control, a better child), the
    parallel phase (seed, control, a better code) and verification, 2 repeats each."""
    config = SearchConfig.from_dict(
        {
            "study": {"name": name},
            "model": {"seed_arch": SEED, "width": 8},
            "serial": {"n_rounds": 0, "max_trials": 1},
            "parallel": {"max_trials": 1},
            "verify": {"repeats": 2},
            # The history below: one control per round, the greedy acceptance.
            "search": {"noise_repeats": 1, "acceptance": "greedy"},
            "schedule": {"iters": 1, "min_size": 64},
        }
    )
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name=name, storage=url, direction=config.direction)
    study.set_user_attr("spnas:config", config.to_dict())
    zeros, code = "(0,0,0,0)", "(1,0,0,0)"
    history = [
        (Decision("seed", arch=SEED), 2.0),
        (Decision("control", arch=SEED, parent=0, round=1), 3.0),
        (Decision("serial", arch=CHILD, parent=0, ops=("expand(s1,after=0)",), round=1), 5.0),
        (Decision("parallel_seed", arch=CHILD, parallel=zeros, parent=2), 6.0),
        (Decision("control", arch=CHILD, parallel=zeros, parent=3, round=1), 6.5),
        (Decision("parallel", arch=CHILD, parallel=code, parent=3, round=1), 7.0),
    ]
    verified = [("seed", SEED, None, 0, (3.0, 4.0)), ("round 1", CHILD, None, 2, (4.0, 5.5))]
    verified.append(("spnet", CHILD, code, 5, (6.0, 7.1)))
    for role, arch, parallel, parent, values in verified:
        for repeat, value in enumerate(values):
            history.append(
                (
                    Decision(
                        "verify",
                        arch=arch,
                        parallel=parallel,
                        parent=parent,
                        round=1,
                        role=role,
                        repeat=repeat,
                    ),
                    value,
                )
            )
    for decision, value in history:
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                system_attrs=decision.to_attrs(),
                user_attrs={"gmacs": 0.1, "AP": value, "params_m": 1.0},
            )
        )
    return url


def test_report_shows_verification(tmp_path: Path, capsys) -> None:
    url = make_verified_study(tmp_path / "spnas.db", "verified")
    out = tmp_path / "report"
    assert main(["report", "--study", "verified", "--storage", url, "--out", str(out)]) == 0
    with Image.open(out / "verification.png") as image:
        assert image.format == "PNG" and image.width > 100
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "Verification: retrained from scratch at equal training" in html
    # spnet against the seed, paired by repeat: +3.0 and +3.1; ± t(0.975, 1) · 0.071 / √2.
    assert (
        "beats the seed at equal training: +3.05 ± 0.07 AP over 2 seeds, "
        "paired 95 % interval [+2.41, +3.69]"
    ) in html
    assert "Kendall τ between search and retrained AP: 1.00" in html
    assert html.count("Plotly.newPlot") == 4
    capsys.readouterr()


def test_report_shows_the_param_importances_of_the_architecture(tmp_path: Path) -> None:
    """A study spnas wrote carries the architecture as params (spnas.search._params): Optuna's
    importance plot has traces, and the report shows it."""
    import random

    from spnas.morphism import mutate
    from spnas.search import architecture_distributions, architecture_values

    config = SearchConfig.from_dict(
        {"study": {"name": "importances"}, "model": {"seed_arch": SEED, "width": 8}}
    )
    url = f"sqlite:///{tmp_path / 'spnas.db'}"
    study = optuna.create_study(study_name="importances", storage=url, direction="maximize")
    study.set_user_attr("spnas:config", config.to_dict())
    distributions = architecture_distributions(config)
    rng = random.Random(0)
    arch = config.seed_arch
    for number in range(12):
        decision = Decision("seed" if number == 0 else "serial", arch=arch, round=min(number, 1))
        params = architecture_values(config, decision)
        study.add_trial(
            optuna.trial.create_trial(
                value=float(arch.num_blocks) + rng.random(),  # more blocks, more AP
                params=params,
                distributions={name: distributions[name] for name in params},
                system_attrs=decision.to_attrs(),
            )
        )
        arch = mutate(arch, config.space, rng, n_ops=1)[0]
    figure = optuna.visualization.plot_param_importances(study)
    assert figure.data and "blocks" in figure.data[0].y
    out = tmp_path / "report"
    assert main(["report", "--study", "importances", "--storage", url, "--out", str(out)]) == 0
    with Image.open(out / "param_importances.png") as image:
        assert image.format == "PNG" and image.width > 100
    assert "spnas-param_importances" in (out / "index.html").read_text(encoding="utf-8")
