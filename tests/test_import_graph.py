"""The import graph of spnas, read from the source (nothing is imported): its packages form
layers, with no cycle between them, and a package uses another only through its public names.

A node is a subpackage (``spnas/search/``) or a top-level module (``spnas/export.py``); every
import counts, lazy ones in functions and ``TYPE_CHECKING`` ones included: each is a
dependency of the layer above on the one below.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import spnas

ROOT = Path(spnas.__file__).parent

#: What the storage layer, at the bottom, may use: nothing of spnas above it.
STORAGE_USES = {"exceptions", "_optional", "_io"}

#: Private cross-package imports not fixed yet, each with why: (importing file, module).
#: One that is gone fails the test, so the list only shrinks.
KNOWN_PRIVATE: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to spnas/
    line: int
    module: str  # the imported module (``from m import name``: ``m.name`` if that is one)
    name: str | None  # the name taken from it, for ``from m import name`` of a non-module


def _node(parts: tuple[str, ...]) -> str:
    """The node of ``spnas.<parts…>``: its first component (a subpackage or a module)."""
    return parts[0].removesuffix(".py")


def _is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports() -> list[Import]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [Import(rel, node.lineno, a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"spnas/{rel}:{node.lineno}: a relative import"
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if _is_module(full):
                        found.append(Import(rel, node.lineno, full, None))
                    else:
                        found.append(Import(rel, node.lineno, node.module or "", alias.name))
    return [i for i in found if i.module.startswith("spnas.")]


def _edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        source = _node(tuple(imp.path.split("/")))
        target = _node(tuple(imp.module.split(".")[1:]))
        if source != target and not source.startswith("__"):
            edges.setdefault(source, set()).add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (its nodes, the first repeated last), else ``None``."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(edges.get(node, ())):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        found = visit(start, [])
        if found:
            return found
    return None


def _private_cross_package(imports: list[Import]) -> set[tuple[str, str, int]]:
    """``from spnas.x._y import …`` (or ``from spnas.x import _name``) outside package x."""
    found = set()
    for imp in imports:
        parts = imp.module.split(".")[1:]
        private = any(p.startswith("_") for p in parts[1:]) or (
            imp.name is not None and imp.name.startswith("_")
        )
        if private and _node(tuple(parts)) != _node(tuple(imp.path.split("/"))):
            found.add((imp.path, imp.module, imp.line))
    return found


def test_the_packages_form_layers_without_a_cycle() -> None:
    edges = _edges(_imports())
    # The graph is read: the layers the design names are there.
    assert {"storage", "arch", "exceptions"} <= edges["search"]
    assert "search" in edges["cli"] and edges["storage"] <= STORAGE_USES, edges["storage"]
    assert _cycle(edges) is None, " → ".join(_cycle(edges) or ())


def test_no_package_imports_another_ones_private_modules() -> None:
    found = _private_cross_package(_imports())
    known = {(path, module) for path, module, _ in found} & KNOWN_PRIVATE
    assert known >= KNOWN_PRIVATE, f"fixed, drop from KNOWN_PRIVATE: {KNOWN_PRIVATE - known}"
    new = sorted(f"spnas/{p}:{line}: {m}" for p, m, line in found if (p, m) not in known)
    assert not new, "import the public name instead:\n" + "\n".join(new)


def test_the_checks_find_a_cycle_and_a_private_import() -> None:
    """The two checks can fail: on a graph with a loop, and on a private import."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    imports = [
        Import("cli/search.py", 1, "spnas.search._checks", "check_settings"),
        Import("search/_worker.py", 2, "spnas.search._checks", "check_settings"),
        Import("cli/search.py", 3, "spnas.search", "_hidden"),
        Import("search/_worker.py", 4, "spnas._io", "atomic_write"),
    ]
    assert _private_cross_package(imports) == {
        ("cli/search.py", "spnas.search._checks", 1),
        ("cli/search.py", "spnas.search", 3),
    }
