"""``tools/install_detectron2.sh`` beside a detectron2 the user already has.

The script runs against a stand-in interpreter that answers its probes (torch importable,
``import detectron2`` works, the installed distribution's version) and records every command,
so the test sees whether pip would have changed anything.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
    *"import torch, setuptools"*) exit 0 ;;
    *"import detectron2, os"*) echo "{version} at /site-packages/detectron2"; exit 0 ;;
    *"version('detectron2')"*) echo "{version}"; exit 0 ;;
    "-m pip"*) exit 0 ;;
esac
exit 1
"""


def run_installer(tmp_path: Path, version: str) -> list[str]:
    log = tmp_path / "calls.log"
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(log=log, version=version))
    python.chmod(0o755)
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "install_detectron2.sh"), str(python)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("version", ["0.6", "0.11"])
def test_an_upstream_detectron2_is_left_alone(tmp_path: Path, version: str) -> None:
    calls = run_installer(tmp_path, version)
    assert not [c for c in calls if c.startswith("-m pip")], calls


def test_our_own_install_gets_its_pins(tmp_path: Path) -> None:
    calls = run_installer(tmp_path, "0.6+pyonly")
    pip = [c for c in calls if c.startswith("-m pip")]
    assert pip == [f"-m pip install --quiet -r {ROOT / 'requirements-detectron2.txt'}"]
