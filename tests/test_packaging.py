"""spnas installs beside other projects: setup.py's metadata asks for compatible ranges, never
exact pins; requirements.txt's pins (what `make` installs) lie inside those ranges; the optional
features are extras, and a feature whose package is missing says which extra installs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from spnas.cli import main
from spnas.exceptions import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"postgres", "proxy", "s3", "dashboard", "report", "test", "all"}


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> dict[str, list[Requirement]]:
    """``{"": install_requires, extra: its requirements}`` as setuptools writes them."""
    base = tmp_path_factory.mktemp("egg")
    subprocess.run(
        [sys.executable, "setup.py", "--quiet", "egg_info", "--egg-base", str(base)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    sections: dict[str, list[Requirement]] = {"": []}
    current = ""
    for line in (base / "spnas.egg-info" / "requires.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
        elif line:
            sections[current].append(Requirement(line))
    return sections


def test_install_requires_are_ranges_not_pins(metadata):
    core = metadata[""]
    assert {canonicalize_name(r.name) for r in core} >= {"torch", "optuna", "numpy"}
    for requirement in (r for reqs in metadata.values() for r in reqs):
        operators = {spec.operator for spec in requirement.specifier}
        assert not operators & {"==", "==="}, f"{requirement} is an exact pin"
        assert ">=" in operators, f"{requirement} has no lower bound"


def test_optional_packages_are_extras_not_requirements(metadata):
    assert set(metadata) - {""} == EXTRAS
    core = {canonicalize_name(r.name) for r in metadata[""]}
    optional = {"psycopg2-binary", "grpcio", "protobuf", "plotly", "kaleido", "pandas"}
    assert not core & optional
    all_extra = {canonicalize_name(r.name) for r in metadata["all"]}
    assert optional | {"optuna-dashboard", "boto3", "pytest"} <= all_extra


def test_requirements_txt_pins_lie_inside_the_ranges(metadata):
    ranges: dict[str, list[Requirement]] = {}
    for requirement in (r for reqs in metadata.values() for r in reqs):
        ranges.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin = Requirement(line)
            pins[canonicalize_name(pin.name)] = next(iter(pin.specifier)).version
    assert set(ranges) - {"boto3"} <= set(pins), "a requirement of setup.py is not pinned"
    for name, version in pins.items():
        assert name in ranges, f"requirements.txt pins {name}, which setup.py does not name"
        for requirement in ranges[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.txt pins {name}=={version}, outside setup.py's {requirement}"
            )


def test_postgres_storage_without_psycopg2_names_the_extra(monkeypatch):
    from spnas.storage import StorageError, make_storage

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 now fails
    with pytest.raises(StorageError, match=r"spnas\[postgres\]") as info:
        make_storage("postgresql+psycopg2://spnas:SECRET@db-host:5432/spnas")
    assert "SECRET" not in str(info.value)


def test_grpc_storage_without_grpcio_names_the_extra(monkeypatch):
    from spnas.storage import StorageError, make_storage

    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(StorageError, match=r"grpcio.*spnas\[proxy\]"):
        make_storage("grpc://localhost:13000")


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("optuna_dashboard", ["dashboard", "--storage", "sqlite:///unused.db"], "dashboard"),
        ("grpc", ["storage-proxy", "--storage", "sqlite:///unused.db"], "proxy"),
    ],
)
def test_commands_without_their_extra_exit_2_naming_it(
    module, argv, extra, monkeypatch, capsys, tmp_path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)
    assert main(argv) == 2
    assert f"pip install 'spnas[{extra}]'" in capsys.readouterr().err
    assert not (tmp_path / "unused.db").exists()


def test_report_without_kaleido_names_the_extra(monkeypatch, tmp_path):
    from spnas.report import write_report

    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(MissingDependencyError, match=r"kaleido.*spnas\[report\]"):
        write_report(None, None, tmp_path / "report")
