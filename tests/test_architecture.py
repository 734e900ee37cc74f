"""The shape of the package: the library never reaches into the commands, and its modules import one another
without a cycle (every import counts, module-level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llm_unlearn"
COMMANDS = ("llm_unlearn.commands", "llm_unlearn.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (a `from package import name` counts as
    an import of the submodule `package.name` when there is one), with the packages those run."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    imported.add(submodule if submodule in modules else base)
        targets = {target for target in imported if target in modules}
        # Importing a.b.c runs the packages a and a.b first: those are imports too, except the importer's own
        # packages, which Python is already running.
        ancestors = {".".join(target.split(".")[:end]) for target in targets for end in range(1, target.count(".") + 1)}
        graph[name] = {target for target in targets | ancestors if not f"{name}.".startswith(f"{target}.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_only_the_commands_import_the_commands():
    offenders = {
        module: sorted(target for target in targets if target.startswith(COMMANDS))
        for module, targets in import_graph().items()
        if not module.startswith(COMMANDS)
    }
    assert {module: targets for module, targets in offenders.items() if targets} == {}


def test_no_library_module_parses_a_command_line():
    """The library calls typed entry points; only the commands build and run parsers."""
    parsing = {"parse_args_and_config", "make_parser", "parse_args", "parse_args_into_dataclasses"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith(COMMANDS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in parsing:
                offenders.append(f"{module_name(path)}:{node.lineno} {node.func.attr}")
    assert offenders == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
