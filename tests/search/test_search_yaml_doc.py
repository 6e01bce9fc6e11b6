"""docs/study-yaml.md against the configuration dataclasses: every key of every section is
documented with the default the code has, and no documented key is missing from the code.

The reference cannot drift: a field added to a section (or a default changed) without its line
in the document fails here, naming the section and the key.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from spnas.search import SearchConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "study-yaml.md"
_HEADING = re.compile(r"^## `([a-z_.]+)`\s*$")
_ROW = re.compile(r"^\| `([a-z_]+)` \| `([^`]*)` \|")


def documented(path: Path = DOC) -> dict[str, dict[str, Any]]:
    """``{section: {key: default}}`` from the document's tables (defaults parsed as YAML)."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        heading = _HEADING.match(line)
        if heading:
            current = sections.setdefault(heading.group(1), {})
            continue
        row = _ROW.match(line)
        if row:
            assert current is not None, f"study-yaml.md line {number}: a key outside a section"
            key, default = row.groups()
            assert key not in current, f"study-yaml.md line {number}: {key!r} documented twice"
            current[key] = yaml.safe_load(default)
    return sections


def section_classes() -> dict[str, type]:
    """The dataclass of every study-YAML section, found through the public ``SearchConfig``."""
    classes = dict(typing.get_type_hints(SearchConfig))
    data = classes["data"](synthetic={})
    classes["data.synthetic"] = type(data.synthetic_settings)
    return classes


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def code_defaults(cls: type) -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(cls):
        assert field.default is not dataclasses.MISSING, f"{cls.__name__}.{field.name}"
        defaults[field.name] = _plain(field.default)
    return defaults


def test_every_section_is_documented_and_no_other():
    assert set(documented()) == set(section_classes())


@pytest.mark.parametrize("section", sorted(section_classes()))
def test_keys_and_defaults_match_the_code(section):
    doc = documented()[section]
    code = code_defaults(section_classes()[section])
    assert sorted(doc) == sorted(code), f"section {section!r}: documented keys differ from the code"
    for key, default in code.items():
        assert doc[key] == default, (
            f"{section}.{key}: documented default {doc[key]!r}, the code's is {default!r}"
        )


def test_a_drifted_document_fails_the_comparison(tmp_path):
    """The comparison can fail: a changed default and an invented key are both caught."""
    text = DOC.read_text(encoding="utf-8")
    drifted = text.replace("| `n_stuck` | `5` | A round", "| `n_stuck` | `7` | A round")
    drifted = drifted.replace("## `final`\n", "## `final`\n\n| `bogus` | `1` | x |\n")
    assert drifted != text
    path = tmp_path / "study-yaml.md"
    path.write_text(drifted, encoding="utf-8")
    doc = documented(path)
    assert doc["serial"]["n_stuck"] == 7 != code_defaults(section_classes()["serial"])["n_stuck"]
    assert sorted(doc["final"]) != sorted(code_defaults(section_classes()["final"]))
