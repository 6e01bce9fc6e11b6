from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

# What every spnas command imports: compatible ranges, so that spnas installs beside other
# projects without forcing their versions. The exact versions the suite runs with are pinned in
# requirements.txt, which `make` installs. Detectron2 has no wheel on PyPI:
# tools/install_detectron2.sh installs it (the torchvision engine works without it).
INSTALL_REQUIRES = [
    "torch>=2.1,<3",
    "torchvision>=0.16,<1",
    # spnas/*/_optuna.py use Optuna internals: only minor versions their tests passed on.
    "optuna>=5.0,<5.2",
    "sqlalchemy>=1.4.2,<3",
    "numpy>=1.24,<3",
    "pillow>=9.1,<14",
    "pyyaml>=6.0,<7",
    "tqdm>=4.60,<5",
    "fvcore>=0.1.5,<0.2",
    "pycocotools>=2.0.6,<3",
]

# Features whose packages are imported only when used; a missing one raises an error naming
# its extra (spnas._optional.require).
EXTRAS_REQUIRE = {
    "postgres": ["psycopg2-binary>=2.9,<3"],  # postgresql+psycopg2:// storage URLs
    "proxy": ["grpcio>=1.60,<2", "protobuf>=4.25,<8"],  # spnas storage-proxy, grpc:// URLs
    "s3": ["boto3>=1.26,<2"],  # s3:// artifact stores
    "dashboard": ["optuna-dashboard>=0.15,<1", "plotly>=5.14,<8"],  # notes and figures
    # spnas report (PNG via kaleido, which needs a Chromium), Study.trials_dataframe()
    "report": ["plotly>=5.14,<8", "kaleido>=0.2.1,<2", "pandas>=1.5,<4"],
    "test": ["pytest>=8,<9.2", "pytest-timeout>=2.2,<3", "pytest-xdist>=3.8,<4", "ruff>=0.5,<1"],
}
EXTRAS_REQUIRE["all"] = sorted({r for reqs in EXTRAS_REQUIRE.values() for r in reqs})

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
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["spnas = spnas.cli:main"]},
    license="Apache-2.0",
)
