"""Imports inside zwaif_fallback/ point one way: no module imports, however indirectly,
a module that imports it, and each part of the package docstring's module map imports
only the parts below it.

Every import statement counts, wherever it is: at the top, under ``TYPE_CHECKING``, and
inside functions (the lazy imports that keep ``import zwaif_fallback`` cheap). A lazy or
type-only import still says "this module knows that one", and a cycle of them is what
makes a newcomer read two modules to understand either. Two things are not edges:
a module's own parent packages (Python imports those first anyway, so every submodule
would "depend" on ``zwaif_fallback/__init__.py``), and the package's ``importlib``
lookups by name in ``__init__.__getattr__`` (they only re-export, like the static
``TYPE_CHECKING`` block above them, which is counted).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import zwaif_fallback

PACKAGE = Path(zwaif_fallback.__file__).parent
#: the porches: the only modules that may import the facade
FACADE_USERS = {"zwaif_fallback", "zwaif_fallback.cli", "zwaif_fallback.cli_commands",
                "zwaif_fallback.cli_parser", "zwaif_fallback.default", "zwaif_fallback.server",
                "zwaif_fallback.fallback_api_models"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its code)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                submodules = [f"{source}.{alias.name}" for alias in node.names
                              if f"{source}.{alias.name}" in modules]
                targets = submodules or [source]  # ``from . import x`` imports the module x
            else:
                continue
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "zwaif_fallback.completions" in graph["zwaif_fallback.manager"]  # from . import x
    assert "zwaif_fallback.telemetry" in graph["zwaif_fallback.measuring"]  # lazy, in a property
    assert "zwaif_fallback.fit" in graph["zwaif_fallback.backends.base"]  # under TYPE_CHECKING
    assert "zwaif_fallback.errors" in graph["zwaif_fallback.backends.openai"]  # from .. import


def test_a_cycle_would_be_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_porches_import_the_facade():
    importers = {name for name, targets in import_graph().items()
                 if "zwaif_fallback.manager" in targets}
    assert importers <= FACADE_USERS


def module_map() -> list[tuple[str, set[str]]]:
    """The parts of the package docstring's module map, top to bottom, with their modules."""
    block = zwaif_fallback.__doc__.split("Module map", 1)[1].split("\n\n")[1]
    parts = []
    for line in block.splitlines():
        more = re.fullmatch(r" {5,}(\w.+)", line)  # a part's modules, continued
        match = re.fullmatch(r" {4}(\w[\w ]*?) {2,}(.+)", line)
        assert match or (more and parts), f"not a module map line: {line!r}"
        listed = (match or more).group(match.lastindex if match else 1)  # type: ignore[union-attr]
        modules = {f"zwaif_fallback.{m.strip()}" for m in listed.split(",") if m.strip()}
        if match:
            parts.append((match.group(1), modules))
        else:
            parts[-1][1].update(modules)
    return parts


def part_of(module: str, parts: list[tuple[str, set[str]]]) -> int:
    """The index of the part ``module`` (or the package it is in, e.g. backends/) is in."""
    for index, (_, modules) in enumerate(parts):
        if module in modules or any(module.startswith(m + ".") for m in modules):
            return index
    raise AssertionError(f"{module} is in no part of the module map")


def test_each_part_imports_only_the_parts_below_it():
    parts = module_map()
    assert [name for name, _ in parts] == ["porches", "facade", "measurement", "call path", "fit",
                                           "discovery", "base"]
    upward = [f"{source} ({parts[part_of(source, parts)][0]}) -> {target} "
              f"({parts[part_of(target, parts)][0]})"
              for source, targets in import_graph().items() if source != "zwaif_fallback"
              for target in targets if part_of(target, parts) < part_of(source, parts)]
    assert upward == []
