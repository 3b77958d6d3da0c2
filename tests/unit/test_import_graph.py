"""No import cycle anywhere in `src/conveyor`: every import statement counts, at module level or inside a function.

`from package import name` is an edge to the package's `__init__` (and to `package.name` when that is a module), so a
submodule that imports from its own package's `__init__`, which imports it back, is a cycle too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def import_graph(root: Path = SRC / "conveyor") -> dict[str, set[str]]:
    modules: dict[str, tuple[Path, bool]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = known(target)
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "conveyor"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from conveyor.sub.a import thing\n")
    (pkg / "sub" / "a.py").write_text("def thing():\n    import conveyor.sub.b\n")
    (pkg / "sub" / "b.py").write_text("from .a import thing\n")
    assert cycles(import_graph(pkg)) == [["conveyor.sub.a", "conveyor.sub.b"]]
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    (pkg / "sub" / "a.py").write_text("from conveyor.sub import b\n")  # b through the package's __init__
    assert cycles(import_graph(pkg)) == [["conveyor.sub", "conveyor.sub.a"]]


def test_src_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the checker read too few modules to mean anything"
    assert cycles(graph) == []


# What each package may import besides itself (README, "Layout"): imports point down, so that the server never
# imports the agent and a runtime never reaches the client. `conveyor`, `conveyor.errors` and `conveyor.progress`
# are the floor everything stands on.
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "config": {"protocol"},
    "client": {"protocol", "config"},
    "env": {"protocol", "config"},
    "runtimes": {"protocol", "config", "env"},
    "server": {"protocol", "config"},
    "agent": {"protocol", "config", "client", "env", "runtimes"},
    "cli": {"protocol", "config", "client", "env", "runtimes", "server", "agent"},
}
FLOOR = {"conveyor", "conveyor.errors", "conveyor.progress", "conveyor.__main__"}
# The first code run inside a container hands over to the command line as `conveyor execute` would.
ALLOWED_EXCEPTIONS = {("conveyor.agent.container_start", "conveyor.cli.main")}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module not in FLOOR) else None


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in import_graph().items():
        source = package_of(module)
        if source is None or module in FLOOR:
            continue
        for target in targets:
            dest = package_of(target)
            if target in FLOOR or dest is None or dest == source or (module, target) in ALLOWED_EXCEPTIONS:
                continue
            if dest not in MAY_IMPORT.get(source, set()):
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []
