"""The engine value types have one public import path, :mod:`spnas.engines`: the contract's
module :mod:`spnas.engines.base` exports the contract only, and no module outside the engines
package imports the value types from anywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import spnas.engines
import spnas.engines.base

ROOT = Path(__file__).resolve().parents[2]
VALUE_TYPES = {
    "DataSpec",
    "ExportedDetector",
    "InitWeights",
    "ModelSpec",
    "Schedule",
    "TrialResult",
}


def test_value_types_are_exported_by_the_package_and_defined_once():
    for name in VALUE_TYPES:
        assert getattr(spnas.engines, name).__module__ == "spnas.engines._types"
    assert set(spnas.engines.base.__all__) == {"Engine", "save_state_dict"}


def test_no_caller_imports_engine_names_from_base():
    offenders = []
    for folder in ("spnas", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "spnas" / "engines"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in (
                    "spnas.engines.base",
                    "spnas.engines._types",
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"import the engine API from spnas.engines: {offenders}"
