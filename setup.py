from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup


def _requirements() -> list[str]:
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    runtime = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith(("pytest", "ruff")):
            runtime.append(line)
    return runtime


setup(
    name="spnas",
    version="0.1.0",
    description="SP-NAS: serial-to-parallel detection backbone search on Optuna and Detectron2",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["spnas", "spnas.*"]),
    include_package_data=True,
    data_files=[
        (
            "share/spnas/detectron_configs",
            sorted(str(p) for p in Path("detectron_configs").glob("*.yaml")),
        ),
        ("share/spnas/studies", sorted(str(p) for p in Path("studies").glob("*.yaml"))),
    ],
    install_requires=_requirements(),
    entry_points={"console_scripts": ["spnas = spnas.cli:main"]},
    license="Apache-2.0",
)
