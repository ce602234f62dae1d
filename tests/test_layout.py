"""The package's layout: no import cycle among switchpoint's modules, nor among its parts.

Only imports that run when a module is first imported count: those at module level (also inside
`try` and plain `if` blocks), not those under `if TYPE_CHECKING:` or inside functions. A cycle
among them makes the import order decide whether a name exists yet.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import switchpoint

PACKAGE = Path(switchpoint.__file__).parent


def _module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _run_at_import(node.body)
            yield from _run_at_import(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _run_at_import(block)
            for handler in node.handlers:
                yield from _run_at_import(handler.body)


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `module` imports when it is imported."""
    found = set()
    for node in _run_at_import(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                found.add(submodule)
            elif base in known:
                found.add(base)
    return found


def _imports(package: Path) -> dict[str, set[str]]:
    known = _module_names(package)
    return {name: _imported(name, path, known) - {name} for name, path in known.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        cycle: list[str] = error.args[1]
        return cycle
    return None


def import_cycle(package: Path) -> list[str] | None:
    """One import cycle among the package's modules (as a path back to its start), or None."""
    return _cycle(_imports(package))


def part_cycle(package: Path, aside: frozenset[str] = frozenset()) -> list[str] | None:
    """One import cycle among the package's parts (a subpackage with all its modules, or a
    top-level module), leaving out the parts in `aside`; None when they import in one direction."""
    root = package.name

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, imported in _imports(package).items():
        if module == root or part(module) in aside:
            continue
        edges = graph.setdefault(part(module), set())
        edges |= {part(m) for m in imported if m != root and part(m) not in aside}
    for name, edges in graph.items():
        edges.discard(name)
    return _cycle(graph)


def test_switchpoint_has_no_import_cycle() -> None:
    assert import_cycle(PACKAGE) is None


def test_the_parts_import_one_another_in_one_direction() -> None:
    # config.py is set aside: it gathers the sections each part defines for itself (cache, quota,
    # security), and those parts read the whole config back.
    assert part_cycle(PACKAGE, aside=frozenset({"switchpoint.config"})) is None


def test_a_cycle_is_found_and_type_only_imports_are_not_counted(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    assert import_cycle(package) is None
    # The same import made at module level (relative, inside a try) closes the cycle.
    (package / "sub" / "b.py").write_text(
        "try:\n    from .. import a\nexcept ImportError:\n    a = None\n"
    )
    cycle = import_cycle(package)
    assert cycle is not None
    assert set(cycle) == {"pkg.a", "pkg.sub.b"}
    assert set(part_cycle(package) or ()) == {"pkg.a", "pkg.sub"}
    assert part_cycle(package, aside=frozenset({"pkg.a"})) is None
